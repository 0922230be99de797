"""How well the latency lookup table predicts end-to-end latency on this device.

Measures a table for a space, then the end-to-end latency of architectures that were not used to
calibrate it (random ones), and prints the mean absolute percentage error with its spread.

    python benchmarks/latency_mape.py --space proxyless_mobile --threads 1 --archs 20 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nni_visplugin import create_space
from nni_visplugin.nas.fixed import build_fixed_model
from nni_visplugin.nas.latency import device_fingerprint, measure_model, measure_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="proxyless_mobile")
    p.add_argument("--input-shape", default="1,8,8", help="C,H,W (1,8,8 is the digits dataset)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--set", action="append", default=[], help="space.KEY=JSON")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--archs", type=int, default=20, help="held-out architectures per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    c, h, w = (int(v) for v in args.input_shape.split(","))
    kwargs = {"in_channels": c, "image_size": h, "num_classes": args.num_classes}
    for item in args.set:
        key, _, value = item.partition("=")
        kwargs[key.removeprefix("space.")] = json.loads(value)

    rows = []
    for seed in args.seeds:
        start = time.time()
        table = measure_table(args.space, kwargs, "cpu", args.batch_size, seed=seed, progress=False)
        table_s = time.time() - start
        space = create_space(args.space, **kwargs)
        rng = np.random.RandomState(10_000 + seed)  # never the calibration architectures
        archs = []
        for _ in range(args.archs):
            memo: dict = {}
            space.random(memo=memo, random_state=rng)
            archs.append(memo)
        models = [build_fixed_model(args.space, kwargs, a) for a in archs]
        # Three passes over all networks, median per network: the table's own protocol.
        passes = [[measure_model(m, (c, h, w), "cpu", args.batch_size) for m in models] for _ in range(3)]
        signed = []
        for i, arch in enumerate(archs):
            measured = statistics.median(p_[i] for p_ in passes)
            signed.append((table.predict(arch) - measured) / measured)
        errors = [abs(e) for e in signed]
        rows.append({"seed": seed, "mape": statistics.mean(errors), "max_ape": max(errors),
                     "bias": statistics.mean(signed), "table_seconds": table_s})
        print(f"seed {seed}: MAPE {100 * rows[-1]['mape']:.1f}%  bias {100 * rows[-1]['bias']:+.1f}%  "
              f"(max {100 * rows[-1]['max_ape']:.1f}%, "
              f"{args.archs} archs, table built in {table_s:.1f} s)")
    mapes = [r["mape"] for r in rows]
    summary = {"space": args.space, "space_kwargs": kwargs, "batch_size": args.batch_size, **device_fingerprint("cpu"),
               "mape_mean": statistics.mean(mapes), "mape_min": min(mapes), "mape_max": max(mapes), "runs": rows}
    print(f"MAPE over seeds {args.seeds}: mean {100 * summary['mape_mean']:.1f}%, "
          f"range {100 * summary['mape_min']:.1f}% to {100 * summary['mape_max']:.1f}%")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
