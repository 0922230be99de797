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


class _DepthwiseInputGrad(torch.autograd.Function):
    """Passes ``y`` (the convolution of ``x``, detached, with the weight) through and gives ``x``
    the input gradient of a stride-1 depthwise convolution, computed as the forward convolution of
    the output gradient with the flipped kernel. The weight gradient stays with PyTorch's own
    convolution node, which the autograd engine skips when no one asks for it (the architecture
    step). On CPU, oneDNN's own input gradient for depthwise 5x5 and dilated kernels takes many
    times longer than that convolution (benchmarks/depthwise_backward.py)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int],
                dilation: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.padding, ctx.dilation, ctx.groups = padding, dilation, x.shape[1]
        return y.view_as(y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        grad_x = None
        if ctx.needs_input_grad[1]:
            (weight,) = ctx.saved_tensors
            (k_h, k_w), (d_h, d_w), (p_h, p_w) = weight.shape[-2:], ctx.dilation, ctx.padding
            grad_x = F.conv2d(grad, weight.flip(-2, -1), None, 1, (d_h * (k_h - 1) - p_h, d_w * (k_w - 1) - p_w),
                              ctx.dilation, ctx.groups)
        return grad, grad_x, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(c, c, kernel, groups=c, bias=False)`` (same parameters and state dict) whose
    training on CPU takes the faster input gradient of :class:`_DepthwiseInputGrad` at stride 1.
    Anything else (CUDA, stride 2, inference, tracing for export) runs ``nn.Conv2d`` itself."""

    def __init__(self, c: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__(c, c, kernel, stride, padding, dilation=dilation, groups=c, bias=False)
        d, k, p = self.dilation, self.kernel_size, self.padding
        self._fast = (self.stride == (1, 1) and self.padding_mode == "zeros" and isinstance(p, tuple)
                      and all(d_ * (k_ - 1) >= p_ for d_, k_, p_ in zip(d, k, p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self._fast and x.device.type == "cpu" and torch.is_grad_enabled()
                and (x.requires_grad or self.weight.requires_grad)
                and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.compiler.is_compiling()):
            y = F.conv2d(x.detach(), self.weight, None, 1, self.padding, self.dilation, self.groups)
            return _DepthwiseInputGrad.apply(y, x, self.weight.detach(), self.padding, self.dilation)
        return super().forward(x)


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
            DepthwiseConv2d(c_in, kernel, stride, padding, dilation),
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


def make_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    """The primitive ``name`` at ``c`` channels, able to rebuild itself at another width.

    ``op.at_width(c2)`` returns a fresh ``name`` at ``c2`` channels with the same stride: partial
    channel connections (PC-DARTS) run each candidate on a fraction of the channels.
    """
    op = DARTS_PRIMITIVES[name](c, stride, affine)
    op.at_width = functools.partial(make_op, name, stride=stride, affine=affine)
    return op
