"""Candidate operations shared by the cell spaces (DARTS primitives, Liu et al. 2019, section 3.1).

Search-time batch norms are affine-free, as in the paper: a learnable scale would let an edge
grow its own weight and blur what alpha measures. ``affine=True`` is used once the architecture
is fixed.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class Zero(nn.Module):
    """The ``none`` operation. ``is_zero`` tells the strategies they can skip it entirely."""

    is_zero = True

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise (dilated) conv -> pointwise conv -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convolutions, the first one carrying the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing every other pixel: two offset 1x1 stride-2 convs.

    The offset branch pads odd sizes so both branches give ceil(H/2), which lets the cell
    spaces run on 7x7 or 28x28 inputs, not only powers of two.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


class PoolBN(nn.Sequential):
    def __init__(self, kind: str, c: int, stride: int, affine: bool):
        pool = nn.MaxPool2d(3, stride, 1) if kind == "max" else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        super().__init__(pool, nn.BatchNorm2d(c, affine=affine))


def skip_connect(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)


OpFactory = Callable[[int, int, bool], nn.Module]

DARTS_PRIMITIVES: dict[str, OpFactory] = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: PoolBN("max", c, stride, affine),
    "avg_pool_3x3": lambda c, stride, affine: PoolBN("avg", c, stride, affine),
    "skip_connect": skip_connect,
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
}


# Dense convolutions, as in NAS-Bench-201's cell (Dong and Yang, ICLR 2020). Not among the DARTS
# defaults; ``primitives`` may add them. A CPU runs a dense 3x3 convolution several times faster
# per multiply-add than a depthwise one (BENCHMARKS.md, "Primitives on the CPU").
EXTRA_PRIMITIVES: dict[str, OpFactory] = {
    "conv_3x3": lambda c, stride, affine: ReLUConvBN(c, c, 3, stride, 1, affine),
    "conv_1x1": lambda c, stride, affine: ReLUConvBN(c, c, 1, stride, 0, affine),
}

ALL_PRIMITIVES: dict[str, OpFactory] = {**DARTS_PRIMITIVES, **EXTRA_PRIMITIVES}


def make_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    """The primitive ``name`` at ``c`` channels, able to rebuild itself at another width.

    ``op.at_width(c2)`` returns a fresh ``name`` at ``c2`` channels with the same stride: partial
    channel connections (PC-DARTS) run each candidate on a fraction of the channels.
    """
    op = ALL_PRIMITIVES[name](c, stride, affine)
    op.at_width = functools.partial(make_op, name, stride=stride, affine=affine)
    return op
