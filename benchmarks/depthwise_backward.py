"""The backward pass of the depthwise convolutions of the DARTS operations: PyTorch's own against
``nni_visplugin.spaces.ops.DepthwiseConv2d``, on CPU.

For each kernel of the DARTS primitives (3x3 and 5x5 of the separable convolutions, 3x3 and 5x5
dilated by 2), at the shape of the first cells of the standard search network (batch 64, 16
channels, 32x32, channels-last): the median time of the forward, of the input gradient alone (the
architecture step needs only that), and of input and weight gradients together (the weight step),
both ways, in one process, alternating. Also the largest difference between the two ways'
gradients.

    python benchmarks/depthwise_backward.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nni_visplugin.spaces.ops import DepthwiseConv2d

KERNELS = [(3, 1), (5, 1), (3, 2), (5, 2)]  # (kernel, dilation): sep_conv_3x3/5x5, dil_conv_3x3/5x5


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="JSON file for the rows")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print("| kernel | forward ms | input grad ms: PyTorch, plugin, ratio | input + weight grads ms: PyTorch, plugin, "
          "ratio | max abs diff |")
    print("|---|---|---|---|---|")
    for kernel, dilation in KERNELS:
        padding = dilation * (kernel - 1) // 2
        fast = DepthwiseConv2d(args.channels, kernel, 1, padding, dilation).to(memory_format=torch.channels_last)
        ref = torch.nn.Conv2d(args.channels, args.channels, kernel, 1, padding, dilation=dilation,
                              groups=args.channels, bias=False).to(memory_format=torch.channels_last)
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(args.batch, args.channels, args.size, args.size).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        g = torch.randn(args.batch, args.channels, args.size, args.size).contiguous(memory_format=torch.channels_last)

        def grads(conv, weight_too):
            return torch.autograd.grad(conv(x), [x, conv.weight] if weight_too else [x], g)

        diff = max((a - b).abs().max().item() for a, b in zip(grads(fast, True), grads(ref, True)))
        row = {"kernel": kernel, "dilation": dilation, "max_abs_diff": diff,
               "forward_ms": median_ms(lambda: ref(x), args.repeats)}
        for name, weight_too in (("input", False), ("both", True)):
            times = {"pytorch": [], "plugin": []}
            for _ in range(3):  # alternate, so drift hits both
                times["pytorch"].append(median_ms(lambda: grads(ref, weight_too), args.repeats))
                times["plugin"].append(median_ms(lambda: grads(fast, weight_too), args.repeats))
            row[name] = {k: statistics.median(v) for k, v in times.items()}
        rows.append(row)
        label = f"{kernel}x{kernel}" + (f", dilation {dilation}" if dilation > 1 else "")
        cells = [f"{row[n]['pytorch']:.2f}, {row[n]['plugin']:.2f}, {row[n]['pytorch'] / row[n]['plugin']:.1f}x"
                 for n in ("input", "both")]
        print(f"| {label} | {row['forward_ms']:.2f} | {cells[0]} | {cells[1]} | {diff:.1e} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
