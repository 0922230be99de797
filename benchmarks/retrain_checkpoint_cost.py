"""What a retraining's per-epoch checkpoint costs, as a share of the epoch it follows.

Takes a checkpoint a running (or cut-short) retraining wrote (``OUT/checkpoints/epoch-NNNN.pt``),
writes it again ``--rounds`` times the way the retraining does (atomically, into a scratch
directory) and divides the median write time by the median epoch time in that checkpoint's own
training curve, so both figures come from the same run on the same machine::

    python benchmarks/retrain_checkpoint_cost.py runs/fashion_mnist_baselines/random-4/checkpoints/epoch-0002.pt
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nni_visplugin.utils.checkpoints import SearchCheckpoints


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a retraining's checkpoints/epoch-NNNN.pt")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    path = Path(args.checkpoint)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "curve" not in state or not state["curve"]:
        raise SystemExit(f"{path} holds no training curve: not a retraining checkpoint")
    epoch_seconds = statistics.median(e["seconds"] for e in state["curve"])
    times = []
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = SearchCheckpoints(scratch)
        for i in range(args.rounds):
            start = time.perf_counter()
            checkpoints.save(i + 1, state)
            times.append(time.perf_counter() - start)
    write = statistics.median(times)
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, write {write * 1e3:.1f} ms (median of {args.rounds}), "
          f"epoch {epoch_seconds:.1f} s (median of {len(state['curve'])}): {write / epoch_seconds:.2e} of an epoch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
