"""What each candidate operation of ``darts_cell`` costs to train on this CPU.

For every primitive at the sizes of a retrained Fashion-MNIST network (width 16 at 14x14 after
the stride-2 stem, width 32 at 7x7 after the first reduction), one training step of the operation
alone (forward and backward of a batch, channels-last, as the retraining runs it with the fast
depthwise backward) is timed; the median of ``--repeats`` steps after one warm-up is reported with
the operation's multiply-adds per image, parameters and multiply-adds per second (the backward counted as twice the forward).

Usage::

    python benchmarks/primitive_costs.py --threads 1 --batch 256 --out benchmarks/results/primitive_costs.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nni_visplugin.nas.fastconv import fast_depthwise  # noqa: E402
from nni_visplugin.spaces.ops import ALL_PRIMITIVES, make_op  # noqa: E402

SIZES = ((16, 14), (32, 7))


def _macs(op: nn.Module, c: int, hw: int) -> int:
    """Multiply-adds of one image through the operation's convolutions."""
    total, size = 0, hw
    for m in op.modules():
        if isinstance(m, nn.Conv2d):
            size_out = (size + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1
            total += size_out * size_out * m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] ** 2
            size = size_out
    return total


def time_step(op: nn.Module, c: int, hw: int, batch: int, repeats: int) -> float:
    op.train().to(memory_format=torch.channels_last)
    x = torch.randn(batch, c, hw, hw).to(memory_format=torch.channels_last).requires_grad_()
    times = []
    with fast_depthwise(op):
        for i in range(repeats + 1):
            start = time.perf_counter()
            op(x).sum().backward()
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for c, hw in SIZES:
        for name in ALL_PRIMITIVES:
            if name == "none":
                continue
            op = make_op(name, c, 1, affine=True)
            seconds = time_step(op, c, hw, args.batch, args.repeats)
            macs = _macs(op, c, hw)
            rows.append({"primitive": name, "channels": c, "size": hw, "ms_per_step": round(seconds * 1000, 2),
                         "macs_per_image": macs, "params": sum(q.numel() for q in op.parameters()),
                         "gmac_per_s": round(3 * macs * args.batch / (seconds * 1e9), 1)})
            print(f"{c:3d}ch {hw:2d}x{hw:<2d} {name:13s} {seconds * 1000:7.2f} ms/step  {macs:8d} MAC/img  "
                  f"{rows[-1]['params']:6d} params  {rows[-1]['gmac_per_s']:5.1f} GMAC/s (backward counted as 2x the forward)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "threads": args.threads, "batch": args.batch,
                                        "repeats": args.repeats, "torch": torch.__version__,
                                        "cpu": platform.processor() or platform.machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
