"""Does a long DARTS search collapse to skip connections, and do the remedies help?

Runs the same search (space, data, budget, seeds) with each variant and records, per run, the skip
connections kept in the derived normal cell, the alpha entropy, the supernet's validation accuracy
and the derived network's validation accuracy after retraining it from scratch (the validation
split only: the test split is never read). One process per run, two at a time.

    python benchmarks/anticollapse.py --seeds 0 1 --epochs 25 --out benchmarks/results/anticollapse.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS = {
    "darts": {},
    "pc-darts (K=2, edge norm)": {"partial_channels": 2, "edge_norm": True},
    "darts- (aux skip 1.0)": {"aux_skip": 1.0},
    "beta-darts (lambda 2)": {"beta_reg": 2.0},
}


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict:
    settings = {"epochs": args.epochs, "seed": seed, "num_threads": 1, "final_epochs": args.final_epochs,
                "space.width": args.width, "space.num_cells": args.cells, **VARIANTS[variant]}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "nni_visplugin.cli", "search", "--space", "darts_cell", "--dataset", args.dataset,
               "--out", out] + [f"--set={k}={json.dumps(v)}" for k, v in settings.items()]
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"variant": variant, "seed": seed, "error": proc.stderr[-2000:]}
        result = json.loads((Path(out) / "result.json").read_text())
        history = json.loads((Path(out) / "alphas.json").read_text())
        arch = json.loads((Path(out) / "arch.json").read_text())
    return {"variant": variant, "seed": seed, "wall_seconds": round(time.time() - start, 1),
            "normal_skips": [h.get("normal_skips") for h in history],
            "alpha_entropy": [round(h.get("alpha_entropy", 0), 4) for h in history],
            "supernet_val_accuracy": result["supernet_val_accuracy"], "val_accuracy": result["val_accuracy"],
            "num_params": result["num_params"], "search_seconds": round(result["search_seconds"], 1),
            "arch": arch, "settings": settings}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--final-epochs", type=int, default=15)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--cells", type=int, default=3)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/anticollapse.json")
    args = p.parse_args()
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(*job, args), jobs))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    print(f"| variant | seeds | final normal-cell skips | val accuracy (retrained) | supernet val acc | search s |")
    print("|---|---|---|---|---|---|")
    for v in args.variants:
        mine = [r for r in rows if r["variant"] == v and "error" not in r]
        if not mine:
            print(f"| {v} | failed: {[r.get('error', '')[-200:] for r in rows if r['variant'] == v]} |")
            continue
        acc = [r["val_accuracy"] for r in mine]
        spread = f" ± {statistics.stdev(acc):.4f}" if len(acc) > 1 else ""
        seeds = ",".join(str(r["seed"]) for r in mine)
        skips = ", ".join(str(r["normal_skips"][-1]) for r in mine)
        each = ", ".join(f"{a:.4f}" for a in acc)
        supernet = ", ".join(f"{r['supernet_val_accuracy']:.3f}" for r in mine)
        seconds = ", ".join(str(r["search_seconds"]) for r in mine)
        print(f"| {v} | {seeds} | {skips} | {statistics.mean(acc):.4f}{spread} ({each}) | {supernet} | {seconds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
