"""Peak memory of a `proxyless` search against a `darts` search on the same space, data and batch.

Each strategy runs in its own fresh process (so one cannot inherit the other's allocations):
the process's resident memory is read just before the search starts and its peak (ru_maxrss)
right after a fixed number of steps; the difference is what the search itself needed.

    python benchmarks/search_memory.py --space proxyless_mobile --batch-size 64 --steps 10
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WORKER = r"""
import json, resource, sys, time
import psutil, torch
from nni_visplugin import create_space, create_strategy
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.data.datasets import load_dataset
from nni_visplugin.nas.fixed import data_kwargs

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
splits = load_dataset(args["dataset"], max_train_samples=args["batch_size"] * args["steps"] * 2)
space = create_space(args["space"], **{**args["space_kwargs"], **data_kwargs(splits)})
x, y = splits.train
n = args["batch_size"] * args["steps"]
train_w = TensorLoader(x[:n], y[:n], args["batch_size"])
train_a = TensorLoader(x[n:2 * n], y[n:2 * n], args["batch_size"])
kwargs = {"epochs": 1}
if args["strategy"] == "proxyless":
    # The lookup table is measured (or loaded) before the measured region.
    from nni_visplugin.nas.latency import load_or_measure
    load_or_measure(args["table"], args["space"], dict(space.trace_kwargs), "cpu", 1)
    kwargs["latency_table"] = args["table"]
strategy = create_strategy(args["strategy"], **kwargs)
rss_before = psutil.Process().memory_info().rss
start = time.perf_counter()
strategy.search(space, train_w, train_a, None)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rss_before": rss_before, "peak": peak, "search_bytes": peak - rss_before, "seconds": seconds}))
"""


def run(strategy: str, args: argparse.Namespace) -> dict:
    payload = json.dumps({"strategy": strategy, "space": args.space, "space_kwargs": json.loads(args.space_kwargs),
                          "dataset": args.dataset, "batch_size": args.batch_size, "steps": args.steps,
                          "threads": args.threads, "table": args.table})
    out = subprocess.run([sys.executable, "-c", WORKER, payload], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="proxyless_mobile")
    p.add_argument("--space-kwargs", default="{}", help="JSON")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--table", default="/tmp/nni-visplugin-bench-latency.json")
    args = p.parse_args()
    results: dict[str, list] = {"darts": [], "proxyless": []}
    for r in range(args.repeats):  # alternate, so drift hits both alike
        for strategy in ("darts", "proxyless"):
            results[strategy].append(run(strategy, args))
    mib = lambda b: b / 2 ** 20  # noqa: E731
    for strategy, rows in results.items():
        print(f"{strategy:9s} search memory (MiB): " + ", ".join(f"{mib(r['search_bytes']):.0f}" for r in rows)
              + f"   peak RSS (MiB): " + ", ".join(f"{mib(r['peak']):.0f}" for r in rows)
              + f"   seconds: " + ", ".join(f"{r['seconds']:.1f}" for r in rows))
    ratios = [p_["search_bytes"] / d["search_bytes"] for p_, d in zip(results["proxyless"], results["darts"])]
    print("proxyless / darts search memory: " + ", ".join(f"{r:.3f}" for r in ratios))
    print(json.dumps({"args": vars(args), "results": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
