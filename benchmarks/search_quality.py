"""Search quality on ground truth: does a search find architectures that random choice does not?

The space is ``nb201_cell`` (NAS-Bench-201's cell and skeleton, 5^6 architectures) on Fashion-MNIST at
a CPU size (``SPACE_KWARGS``). Training and validation images both come from Fashion-MNIST's training
split; the test split is never read.

1. ``table``: ``TABLE['size']`` architectures drawn uniformly at random are trained stand-alone with
   one fixed recipe (``RECIPE``), at two seeds each. The table is ground truth when the two seeds rank
   the architectures alike (Kendall tau >= 0.7, in the report).
2. ``search``: a method (a strategy and its settings, ``METHODS``) searches the space at a search
   seed; the row keeps the derived architecture, the search's CPU time (this process) and its final
   normalised alpha entropy.
3. ``random``: random search with the CPU time of ``--like``'s searches: draw architectures,
   train each for one epoch of the recipe, keep the best on the validation images.
4. ``train``: every architecture a search or random search derived that the table lacks is trained
   with the recipe at the table's seeds.
5. ``report``: per method, the derived architectures' accuracy (mean over the two training seeds),
   percentile among the table (the share below it, ties counting half), CPU time and entropy, as
   Markdown and JSON, and the plot of percentile against search CPU time.

Every command appends rows (JSON lines, one file per ``--shard``) as they finish and skips what is
on record, so an interrupted command resumes when it is run again. The recipe is written to
``OUT/recipe.json`` on first use; a folder made with another recipe is refused.

    python benchmarks/search_quality.py table  --shard 0/2 &  python benchmarks/search_quality.py table --shard 1/2
    python benchmarks/search_quality.py search --method gdas --seeds 0 1 2
    python benchmarks/search_quality.py random --like gdas --seeds 0 1 2
    python benchmarks/search_quality.py train  --shard 0/2 &  python benchmarks/search_quality.py train --shard 1/2
    python benchmarks/search_quality.py report
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
# Two cells per stage, so the cells (not the skeleton's residual blocks) weigh in the accuracy; the
# images are average-pooled to 14x14, which makes every training four times cheaper.
SPACE_KWARGS = {"in_channels": 1, "image_size": 14, "num_classes": 10, "width": 8, "cells_per_stage": 2}
LABELS = [f"edge_{i}_{j}" for i, j in NB201_EDGES]
TABLE = {"size": 50, "arch_seed": 0, "seeds": [0, 1]}
# The stand-alone recipe. Two seeds of one architecture differ mostly by training noise, not by the
# validation sample (doubling the validation images barely narrows them), so the recipe trains on
# more images rather than measuring on more.
RECIPE = {"train_images": 25000, "val_images": 24000, "epochs": 10, "batch_size": 128, "lr": 0.1,
          "val_fraction": 0.4, "split_seed": 0, "pool": 2}
# What every search sees: the first images of the recipe's training images, halved between the
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
    "gdas": ("gdas", {**COMMON}),
    # Ten times the architecture learning rate: do the alphas decide within the same steps, and is
    # what they decide better?
    "darts-1-alr0.03": ("darts", {**COMMON, "arch_lr": 3e-2}),
    "gdas-alr0.03": ("gdas", {**COMMON, "arch_lr": 3e-2}),
    # GDAS steps are cheaper: 25 epochs take about the CPU time of DARTS's 10.
    "gdas-25ep": ("gdas", {**COMMON, "epochs": 25}),
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


def recipe_record() -> dict[str, Any]:
    return {"space": SPACE, "space_kwargs": SPACE_KWARGS, "table": TABLE, "recipe": RECIPE}


def check_recipe(out: Path) -> None:
    """Write ``out/recipe.json``, or refuse a folder whose rows were made with another recipe."""
    path = out / "recipe.json"
    mine = recipe_record()
    if path.exists():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise SystemExit(f"{out} holds rows of another recipe ({', '.join(differ)} differ); use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=1) + "\n")


def load_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The recipe's training and validation images, both from Fashion-MNIST's training split."""
    splits = load_dataset("fashion-mnist", val_fraction=RECIPE["val_fraction"], split_seed=RECIPE["split_seed"])
    order = torch.randperm(len(splits.train[0]), generator=torch.Generator().manual_seed(0))
    keep = order[: RECIPE["train_images"]]

    def small(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, RECIPE["pool"]) if RECIPE["pool"] > 1 else x

    n_val = RECIPE["val_images"]
    return {"train": (small(splits.train[0][keep]), splits.train[1][keep]),
            "val": (small(splits.val[0][:n_val]), splits.val[1][:n_val])}


def train_standalone(arch: dict[str, str], seed: int, data: dict, epochs: int | None = None) -> dict[str, Any]:
    """Stand-alone validation accuracy of ``arch`` under the recipe (``epochs`` shortens it)."""
    torch.manual_seed(seed)
    start = time.process_time()
    model = build_fixed_model(SPACE, fixed_kwargs(SPACE, SPACE_KWARGS), arch)
    x, y = data["train"]
    train_from_scratch(model, TensorLoader(x, y, RECIPE["batch_size"], shuffle=True, seed=seed),
                       epochs or RECIPE["epochs"], lr=RECIPE["lr"])
    acc = evaluate(model, TensorLoader(*data["val"], 1000))
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


def shard_of(args: argparse.Namespace) -> tuple[int, int, str]:
    k, n = (int(v) for v in args.shard.split("/"))
    return k, n, f"{k}of{n}"


def train_jobs(args: argparse.Namespace, kind: str, keys: list[str]) -> None:
    """Train every (architecture, table seed) of ``keys`` not on record, this shard's share of them."""
    k, n, shard = shard_of(args)
    store = Store(args.out, kind, shard)
    done = {(r["arch"], r["seed"]) for kind_ in ("table", "extra") for r in Store(args.out, kind_).rows()}
    jobs = [(key, s) for key in keys for s in TABLE["seeds"]]
    data = None
    for i, (key, seed) in enumerate(jobs):
        if i % n != k or (key, seed) in done:
            continue
        data = data or load_data()
        row = {"arch": key, "seed": seed, **train_standalone(arch_of(key), seed, data)}
        store.append(row)
        print(f"[{i + 1}/{len(jobs)}] {key} seed {seed}: {row['val_accuracy']:.4f} ({row['cpu_seconds']:.0f} s)",
              flush=True)


def cmd_table(args: argparse.Namespace) -> None:
    train_jobs(args, "table", [arch_key(a) for a in sample_archs(TABLE["size"], TABLE["arch_seed"])])


def cmd_train(args: argparse.Namespace) -> None:
    derived = [r["arch"] for kind in ("search", "random") for r in Store(args.out, kind).rows()]
    train_jobs(args, "extra", list(dict.fromkeys(derived)))


def run_search(method: str, seed: int, data: dict) -> dict[str, Any]:
    """One search of ``method`` at ``seed``: the derived architecture, CPU time, final entropy."""
    strategy_name, settings = METHODS[method]
    torch.manual_seed(seed)
    x, y = (t[: SEARCH["images"]] for t in data["train"])
    w_idx, a_idx = bilevel_halves(len(x), seed)
    b = SEARCH["batch_size"]
    train_w = TensorLoader(x[w_idx], y[w_idx], b, shuffle=True, seed=seed)
    train_a = TensorLoader(x[a_idx], y[a_idx], b, shuffle=True, seed=seed + 1)
    start = time.process_time()
    space = nni_visplugin.create_space(SPACE, **SPACE_KWARGS)
    outcome = nni_visplugin.create_strategy(strategy_name, **settings).search(space, train_w, train_a)
    cpu = time.process_time() - start
    last = outcome.history[-1]
    return {"method": method, "seed": seed, "arch": arch_key(outcome.arch), "cpu_seconds": cpu,
            "alpha_entropy": last["alpha_entropy"], "settings": {"strategy": strategy_name, **settings},
            "search": SEARCH}


def cmd_search(args: argparse.Namespace) -> None:
    _, _, shard = shard_of(args)
    store = Store(args.out, "search", shard)
    done = {(r["method"], r["seed"]) for r in store.rows()}
    data = None
    for seed in args.seeds:
        if (args.method, seed) in done:
            continue
        data = data or load_data()
        row = run_search(args.method, seed, data)
        store.append(row)
        print(f"{args.method} seed {seed}: {row['arch']} entropy {row['alpha_entropy']:.3f} "
              f"({row['cpu_seconds']:.0f} s)", flush=True)


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
    _, _, shard = shard_of(args)
    like = [r["cpu_seconds"] for r in Store(args.out, "search").rows() if r["method"] == args.like]
    if not like:
        raise SystemExit(f"no searches of {args.like!r} on record to take the budget from; run them first")
    budget = statistics.mean(like)
    store = Store(args.out, "random", shard)
    done = {r["seed"] for r in store.rows() if r.get("like") == args.like}
    data = None
    for seed in args.seeds:
        if seed in done:
            continue
        data = data or load_data()
        row = {**run_random(seed, budget, data), "like": args.like}
        store.append(row)
        print(f"random seed {seed}: {row['tried']} tried in {row['cpu_seconds']:.0f} s, best {row['arch']}", flush=True)


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two paired lists: (concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b))."""
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


def recipe_accuracies(out: Path) -> dict[str, dict[int, float]]:
    by_arch: dict[str, dict[int, float]] = {}
    for kind in ("table", "extra"):
        for r in Store(out, kind).rows():
            by_arch.setdefault(r["arch"], {})[r["seed"]] = r["val_accuracy"]
    return by_arch


def table_summary(out: Path) -> dict[str, Any]:
    table_keys = {arch_key(a) for a in sample_archs(TABLE["size"], TABLE["arch_seed"])}
    by_arch = {k: v for k, v in recipe_accuracies(out).items() if k in table_keys}
    complete = {k: v for k, v in by_arch.items() if all(s in v for s in TABLE["seeds"])}
    seeds = [[v[s] for v in complete.values()] for s in TABLE["seeds"]]
    means = {k: statistics.mean(v.values()) for k, v in complete.items()}
    ranked = sorted(means.values())
    diffs = [abs(a - b) for a, b in zip(*seeds)]
    return {"architectures": len(complete), "kendall_tau": kendall_tau(*seeds) if len(complete) > 2 else None,
            "means": means, "best": max(ranked) if ranked else None,
            "median": statistics.median(ranked) if ranked else None,
            "top10_threshold": ranked[int(0.9 * len(ranked))] if ranked else None,
            "mean_seed_difference": statistics.mean(diffs) if diffs else None}


def method_rows(out: Path, table_means: list[float]) -> dict[str, list[dict[str, Any]]]:
    """Rows per method, each with its architecture's recipe accuracy (mean over the table's seeds,
    None until ``train`` has run) and percentile."""
    accs = recipe_accuracies(out)
    per_method: dict[str, list[dict[str, Any]]] = {}
    for r in Store(out, "search").rows() + Store(out, "random").rows():
        seen = accs.get(r["arch"], {})
        done = all(s in seen for s in TABLE["seeds"])
        r["val_accuracy"] = statistics.mean(seen[s] for s in TABLE["seeds"]) if done else None
        r["percentile"] = percentile(r["val_accuracy"], table_means) if done else None
        name = r["method"] if r["method"] != "random" else f"random (CPU of {r['like']})"
        per_method.setdefault(name, []).append(r)
    return {m: sorted(rs, key=lambda r: r["seed"]) for m, rs in per_method.items()}


def _method_line(method: str, rs: list[dict[str, Any]]) -> str:
    scored = [r for r in rs if r["val_accuracy"] is not None]
    accs = [r["val_accuracy"] for r in scored]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    ent = [r["alpha_entropy"] for r in rs if "alpha_entropy" in r]
    pcts = ", ".join(f"{r['percentile']:.0f}" if r["percentile"] is not None else "?" for r in rs)
    acc = f"{statistics.mean(accs):.4f} ± {sd:.4f}" if accs else "?"
    top10 = sum(1 for r in scored if r["percentile"] >= 90)
    return (f"| {method} | {', '.join(str(r['seed']) for r in rs)} | {acc} | {pcts} | {top10}/{len(rs)} | "
            f"{statistics.mean(r['cpu_seconds'] for r in rs):.0f} | "
            f"{f'{statistics.mean(ent):.3f}' if ent else '-'} |")


def cmd_report(args: argparse.Namespace) -> None:
    summary = table_summary(args.out)
    means = list(summary["means"].values())
    per_method = method_rows(args.out, means)
    lines = [f"Table: {summary['architectures']} architectures x seeds {TABLE['seeds']}, Kendall tau between the "
             f"seeds {summary['kendall_tau']:.3f}, mean difference between the seeds "
             f"{summary['mean_seed_difference']:.4f}; best {summary['best']:.4f}, top-10% threshold "
             f"{summary['top10_threshold']:.4f}, median {summary['median']:.4f}.", "",
             "| method | search seeds | val accuracy (mean ± sd) | percentile per seed | in top 10% | "
             "CPU s per search | final entropy |", "|---|---|---|---|---|---|---|"]
    lines += [_method_line(m, rs) for m, rs in per_method.items()]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    json.dump({"table": {k: v for k, v in summary.items() if k != "means"}, "table_means": summary["means"],
               **recipe_record(), "search": SEARCH, "methods": per_method},
              (args.out / "report.json").open("w"), indent=1)
    plot(per_method, args.out / "percentile_vs_cpu.png")
    print("\n".join(lines))


def plot(per_method: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = "osD^vP*Xh<>"
    for i, (m, rs) in enumerate(per_method.items()):
        rs = [r for r in rs if r["percentile"] is not None]
        ax.scatter([r["cpu_seconds"] / 60 for r in rs], [r["percentile"] for r in rs], label=m, s=34,
                   marker=markers[i % len(markers)], alpha=0.8)
    ax.axhline(90, color="grey", ls="--", lw=0.8, label="top 10%")
    ax.set_xscale("log")
    ax.set_xlabel("search CPU time (minutes, one thread, log scale)")
    ax.set_ylabel("percentile among the table's architectures")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("table", "search", "random", "train", "report"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_quality"))
    parser.add_argument("--shard", default="0/1", help="k/n: this process takes every n-th job from the k-th")
    parser.add_argument("--method", choices=list(METHODS), default="gdas")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--like", choices=list(METHODS), default="gdas",
                        help="random: the method whose mean search CPU time is the budget")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    check_recipe(args.out)
    {"table": cmd_table, "search": cmd_search, "random": cmd_random, "train": cmd_train,
     "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
