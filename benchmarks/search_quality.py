"""Search quality on ground truth: does a search find architectures that random choice does not?

The space is ``nb201_cell`` (NAS-Bench-201's cell and skeleton, 5^6 architectures) on Fashion-MNIST
at a CPU size (14x14 images, width 8, two cells per stage). Training and validation images both come from Fashion-MNIST's training split; the
test split is never read.

1. ``table``: 50 architectures drawn uniformly at random (seed 0) are trained stand-alone with one
   fixed short recipe, at two seeds each. The two seeds' rankings must agree (Kendall tau >= 0.7)
   for the table to be ground truth. Rows are appended as they finish; an interrupted run resumes.
2. ``search``: a method (a strategy and its settings) searches the space at a search seed; the
   derived architecture is trained with the table's recipe at the table's seeds (unless the table
   has it), and ranked among the 50 by its mean accuracy (percentile: the share of the table below
   it, ties counting half). The search's CPU time (this process, one thread) and final normalised
   alpha entropy are recorded.
3. ``random``: random search with a CPU budget (by default the mean CPU time of ``--like``'s
   searches): draw architectures, short-train each (one epoch of the recipe), keep the best on the
   validation images, then train it with the recipe.
4. ``report``: the tables (Markdown and JSON) and the plot of percentile against search CPU time.

    python benchmarks/search_quality.py table  --out benchmarks/results/search_quality --shard 0/2 &
    python benchmarks/search_quality.py table  --out benchmarks/results/search_quality --shard 1/2
    python benchmarks/search_quality.py search --out benchmarks/results/search_quality --method darts-pt --seeds 0 1 2
    python benchmarks/search_quality.py random --out benchmarks/results/search_quality --like darts-pt --seeds 0 1 2
    python benchmarks/search_quality.py report --out benchmarks/results/search_quality
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import nni_visplugin
from nni_visplugin.data.datasets import load_dataset
from nni_visplugin.data.loader import TensorLoader, bilevel_halves
from nni_visplugin.nas.fixed import build_fixed_model, fixed_kwargs
from nni_visplugin.nas.training import evaluate, train_from_scratch
from nni_visplugin.spaces.nb201_cell import NB201_EDGES, NB201_OPERATIONS

SPACE = "nb201_cell"
# Two cells per stage, so the cells (not the skeleton's residual blocks) decide the accuracy; the
# images are average-pooled to 14x14, which makes every training four times cheaper.
SPACE_KWARGS = {"in_channels": 1, "image_size": 14, "num_classes": 10, "width": 8, "cells_per_stage": 2}
LABELS = [f"edge_{i}_{j}" for i, j in NB201_EDGES]
TABLE_SIZE, TABLE_SEED, TABLE_SEEDS = 50, 0, (0, 1)
# The stand-alone recipe: short enough for 100 trainings on a 2-core CPU, long enough that two
# seeds rank the table alike (the report checks Kendall tau).
RECIPE = {"train_images": 10000, "val_images": 5000, "epochs": 10, "batch_size": 128, "lr": 0.1}
# What every search sees: the first half of the recipe's training images, halved again between the
# weights and alpha.
SEARCH = {"images": 5000, "epochs": 10, "batch_size": 64}
COMMON = {"epochs": SEARCH["epochs"], "arch_lr": 3e-3}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "darts-1": ("darts", {**COMMON}),
    "darts-2": ("darts", {**COMMON, "order": 2}),
    "pc-darts": ("darts", {**COMMON, "partial_channels": 2}),
    "beta-darts": ("darts", {**COMMON, "beta_reg": 2.0}),
    "darts-minus": ("darts", {**COMMON, "aux_skip": 1.0}),
    "darts-pt": ("darts", {**COMMON, "operations": "perturbation"}),
    "proxyless": ("proxyless", {**COMMON}),
}


def arch_key(arch: dict[str, str]) -> str:
    return "|".join(arch[label] for label in LABELS)


def arch_of(key: str) -> dict[str, str]:
    return dict(zip(LABELS, key.split("|")))


def sample_archs(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` distinct architectures drawn uniformly from the space."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        arch = {label: rng.choice(NB201_OPERATIONS) for label in LABELS}
        if arch_key(arch) not in seen:
            seen.add(arch_key(arch))
            out.append(arch)
    return out


def load_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The recipe's training and validation images, both from Fashion-MNIST's training split."""
    splits = load_dataset("fashion-mnist", val_fraction=0.1, split_seed=0)
    order = torch.randperm(len(splits.train[0]), generator=torch.Generator().manual_seed(0))
    keep = order[: RECIPE["train_images"]]

    def small(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 2)  # 28x28 -> 14x14

    return {"train": (small(splits.train[0][keep]), splits.train[1][keep]),
            "val": (small(splits.val[0][: RECIPE["val_images"]]), splits.val[1][: RECIPE["val_images"]])}


def train_standalone(arch: dict[str, str], seed: int, data: dict, epochs: int | None = None) -> dict[str, Any]:
    """Stand-alone validation accuracy of ``arch`` under the recipe (``epochs`` shortens it)."""
    torch.manual_seed(seed)
    start = time.process_time()
    model = build_fixed_model(SPACE, fixed_kwargs(SPACE, SPACE_KWARGS), arch)
    x, y = data["train"]
    train_from_scratch(model, TensorLoader(x, y, RECIPE["batch_size"], shuffle=True, seed=seed),
                       epochs or RECIPE["epochs"], lr=RECIPE["lr"])
    acc = evaluate(model, TensorLoader(*data["val"], 500))
    return {"val_accuracy": acc, "cpu_seconds": time.process_time() - start,
            "params": sum(p.numel() for p in model.parameters())}


class Store:
    """Rows of one kind (``table``, ``extra``, ``search``, ``random``) as JSON lines, one file per
    shard, so parallel processes never write one file."""

    def __init__(self, out: Path, kind: str, shard: str = "0"):
        self.out, self.kind = out, kind
        self.path = out / f"{kind}-{shard}.jsonl"

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for path in sorted(self.out.glob(f"{self.kind}-*.jsonl")):
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return rows

    def append(self, row: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def accuracy_of(key: str, out: Path, shard: str, data: dict) -> float:
    """Mean stand-alone accuracy of ``key`` over the table's seeds, trained now where not on record."""
    known = {(r["arch"], r["seed"]): r["val_accuracy"] for kind in ("table", "extra") for r in Store(out, kind).rows()}
    accs = []
    for seed in TABLE_SEEDS:
        if (key, seed) not in known:
            row = {"arch": key, "seed": seed, **train_standalone(arch_of(key), seed, data)}
            Store(out, "extra", shard).append(row)
            known[(key, seed)] = row["val_accuracy"]
        accs.append(known[(key, seed)])
    return statistics.mean(accs)


def cmd_table(args: argparse.Namespace) -> None:
    k, n = (int(v) for v in args.shard.split("/"))
    store = Store(args.out, "table", str(k))
    done = {(r["arch"], r["seed"]) for r in store.rows()}
    jobs = [(arch_key(a), s) for a in sample_archs(TABLE_SIZE, TABLE_SEED) for s in TABLE_SEEDS]
    data = load_data()
    for i, (key, seed) in enumerate(jobs):
        if i % n != k or (key, seed) in done:
            continue
        row = {"arch": key, "seed": seed, **train_standalone(arch_of(key), seed, data)}
        store.append(row)
        print(f"[{i + 1}/{len(jobs)}] {key} seed {seed}: {row['val_accuracy']:.4f} ({row['cpu_seconds']:.0f} s)",
              flush=True)


def run_search(method: str, seed: int, data: dict) -> dict[str, Any]:
    """One search of ``method`` at ``seed``: the derived architecture, CPU time, final entropy."""
    strategy_name, settings = METHODS[method]
    torch.manual_seed(seed)
    x, y = (t[: SEARCH["images"]] for t in data["train"])
    w_idx, a_idx = bilevel_halves(len(x), seed)
    b = SEARCH["batch_size"]
    train_w = TensorLoader(x[w_idx], y[w_idx], b, shuffle=True, seed=seed)
    train_a = TensorLoader(x[a_idx], y[a_idx], b, shuffle=True, seed=seed + 1)
    val = TensorLoader(*data["val"], 500)
    start = time.process_time()
    space = nni_visplugin.create_space(SPACE, **SPACE_KWARGS)
    outcome = nni_visplugin.create_strategy(strategy_name, **settings).search(space, train_w, train_a, val)
    cpu = time.process_time() - start
    last = outcome.history[-1]
    return {"method": method, "seed": seed, "arch": arch_key(outcome.arch), "cpu_seconds": cpu,
            "alpha_entropy": last["alpha_entropy"], "supernet_val_accuracy": last.get("val_accuracy"),
            "settings": {"strategy": strategy_name, **settings}}


def cmd_search(args: argparse.Namespace) -> None:
    data = load_data()
    store = Store(args.out, "search", args.shard.replace("/", "of"))
    done = {(r["method"], r["seed"]) for r in store.rows()}
    for seed in args.seeds:
        if (args.method, seed) in done:
            continue
        row = run_search(args.method, seed, data)
        row["val_accuracy"] = accuracy_of(row["arch"], args.out, args.shard.replace("/", "of"), data)
        store.append(row)
        print(f"{args.method} seed {seed}: {row['arch']} acc {row['val_accuracy']:.4f} "
              f"entropy {row['alpha_entropy']:.3f} ({row['cpu_seconds']:.0f} s)", flush=True)


def run_random(seed: int, budget: float, data: dict) -> dict[str, Any]:
    """Random search: one-epoch trainings of random architectures until ``budget`` CPU seconds."""
    rng = random.Random(1000 + seed)
    start = time.process_time()
    best, tried = None, []
    while not tried or time.process_time() - start < budget:
        arch = {label: rng.choice(NB201_OPERATIONS) for label in LABELS}
        acc = train_standalone(arch, seed, data, epochs=1)["val_accuracy"]
        tried.append(arch_key(arch))
        if best is None or acc > best[1]:
            best = (arch_key(arch), acc)
    return {"method": "random", "seed": seed, "arch": best[0], "cpu_seconds": time.process_time() - start,
            "budget_seconds": budget, "tried": len(tried), "short_val_accuracy": best[1]}


def cmd_random(args: argparse.Namespace) -> None:
    data = load_data()
    shard = args.shard.replace("/", "of")
    if args.budget:
        budget = args.budget
    else:
        like = [r["cpu_seconds"] for r in Store(args.out, "search").rows() if r["method"] == args.like]
        if not like:
            raise SystemExit(f"no searches of {args.like!r} on record to take the budget from; pass --budget")
        budget = statistics.mean(like)
    store = Store(args.out, "random", shard)
    done = {r["seed"] for r in store.rows() if r.get("like") == args.like}
    for seed in args.seeds:
        if seed in done:
            continue
        row = {**run_random(seed, budget, data), "like": args.like}
        row["val_accuracy"] = accuracy_of(row["arch"], args.out, shard, data)
        store.append(row)
        print(f"random seed {seed}: {row['tried']} tried, {row['arch']} acc {row['val_accuracy']:.4f}", flush=True)


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two paired lists (ties in either list excluded from the pairs' count)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denom if denom else float("nan")


def percentile(acc: float, table: list[float]) -> float:
    below = sum(1 for t in table if t < acc) + 0.5 * sum(1 for t in table if t == acc)
    return 100.0 * below / len(table)


def table_summary(out: Path) -> dict[str, Any]:
    by_arch: dict[str, dict[int, float]] = {}
    for r in Store(out, "table").rows():
        by_arch.setdefault(r["arch"], {})[r["seed"]] = r["val_accuracy"]
    complete = {k: v for k, v in by_arch.items() if all(s in v for s in TABLE_SEEDS)}
    seeds = [[v[s] for v in complete.values()] for s in TABLE_SEEDS]
    means = {k: statistics.mean(v.values()) for k, v in complete.items()}
    ranked = sorted(means.values())
    return {"architectures": len(complete), "kendall_tau": kendall_tau(*seeds) if len(complete) > 2 else None,
            "means": means, "best": max(ranked) if ranked else None, "median": statistics.median(ranked) if ranked else None,
            "top10_threshold": ranked[int(0.9 * len(ranked))] if ranked else None}


def method_rows(out: Path, means: list[float]) -> list[dict[str, Any]]:
    rows = Store(out, "search").rows() + Store(out, "random").rows()
    for r in rows:
        r["percentile"] = percentile(r["val_accuracy"], means)
    return rows


def cmd_report(args: argparse.Namespace) -> None:
    summary = table_summary(args.out)
    means = list(summary["means"].values())
    rows = method_rows(args.out, means)
    lines = [f"Table: {summary['architectures']} architectures x seeds {list(TABLE_SEEDS)}, Kendall tau between the "
             f"seeds {summary['kendall_tau']:.3f}; best {summary['best']:.4f}, median {summary['median']:.4f}.", "",
             "| method | seeds | val accuracy (mean ± sd) | percentile per seed | CPU s per search (mean) | "
             "final entropy (mean) |", "|---|---|---|---|---|---|"]
    methods = list(dict.fromkeys(r["method"] if r["method"] != "random" else f"random (= {r['like']} CPU)"
                                 for r in rows))
    per_method = {}
    for m in methods:
        rs = sorted((r for r in rows if (r["method"] if r["method"] != "random" else f"random (= {r['like']} CPU)") == m),
                    key=lambda r: r["seed"])
        per_method[m] = rs
        accs = [r["val_accuracy"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        ent = [r["alpha_entropy"] for r in rs if "alpha_entropy" in r]
        seeds = ", ".join(str(r["seed"]) for r in rs)
        pcts = ", ".join(f"{r['percentile']:.0f}" for r in rs)
        entropy = f"{statistics.mean(ent):.3f}" if ent else "-"
        lines.append(f"| {m} | {seeds} | {statistics.mean(accs):.4f} ± {sd:.4f} | {pcts} | "
                     f"{statistics.mean(r['cpu_seconds'] for r in rs):.0f} | {entropy} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    json.dump({"table": {k: v for k, v in summary.items() if k != "means"}, "table_means": summary["means"],
               "recipe": RECIPE, "search": SEARCH, "space": SPACE_KWARGS, "methods": per_method},
              (args.out / "report.json").open("w"), indent=1)
    plot(per_method, args.out / "percentile_vs_cpu.png")
    print("\n".join(lines))


def plot(per_method: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, rs in per_method.items():
        ax.scatter([r["cpu_seconds"] / 60 for r in rs], [r["percentile"] for r in rs], label=m, s=30)
    ax.axhline(90, color="grey", ls="--", lw=0.8, label="top 10%")
    ax.set_xlabel("search CPU time (minutes, one thread)")
    ax.set_ylabel("percentile among the table's architectures")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("table", "search", "random", "report"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_quality"))
    parser.add_argument("--shard", default="0/1", help="k/n: this process takes every n-th job from the k-th")
    parser.add_argument("--method", choices=list(METHODS), default="darts-pt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--like", default="darts-pt", help="random: take the CPU budget from this method's searches")
    parser.add_argument("--budget", type=float, default=0.0, help="random: CPU seconds per search (0: from --like)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"table": cmd_table, "search": cmd_search, "random": cmd_random, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
