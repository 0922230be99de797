"""A faster backward pass for the depthwise convolutions that oneDNN has no fast kernel for.

On CPU, oneDNN computes the forward pass of every depthwise convolution quickly, and both gradients
of an undilated 3x3 one, but the gradients of the 5x5 and the dilated kernels of the DARTS
candidates (``sep_conv_5x5``, ``dil_conv_3x3``, ``dil_conv_5x5``) take up to 150 times as long as
their forward pass, the strided ones of the reduction cells most (BENCHMARKS.md). Here they are
computed from the fast kernels only:

- the input gradient is a forward depthwise convolution of the output gradient with the flipped
  kernel (for stride 2, of the output gradient spread onto the input's grid with zeros between);
- the weight gradient is a sum of undilated 3x3 weight gradients: a dilation or a stride splits
  the maps into phases (``x[a::2]``), on which the kernel, or every other tap of it, acts as an
  undilated one, and the kernel is cut into 3x3 blocks (zero-padded to a multiple of 3).

The values are the convolution's own, up to the order of the float sums (tests/test_fast_path.py
checks both gradients against PyTorch's in float64). :func:`enable_fast_depthwise` turns it on for
the applicable convolutions of a module tree, on CPU in training with gradients only: evaluation,
tracing, export and CUDA see a plain ``nn.Conv2d``. ``NNI_VISPLUGIN_FAST_DEPTHWISE=0`` leaves every
convolution as it is.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["depthwise_conv2d", "enable_fast_depthwise", "disable_fast_depthwise", "fast_depthwise", "applies",
           "FastDepthwiseConv2d"]

_ENV = "NNI_VISPLUGIN_FAST_DEPTHWISE"


def applies(conv: nn.Module) -> bool:
    """Whether ``conv`` is a depthwise convolution this backward pass is for (and is faster for)."""
    if type(conv) not in (nn.Conv2d, FastDepthwiseConv2d):
        return False
    k, d, p, s = conv.kernel_size, conv.dilation, conv.padding, conv.stride
    if isinstance(p, str) or conv.padding_mode != "zeros" or conv.bias is not None \
            or not conv.groups == conv.in_channels == conv.out_channels:
        return False
    # oneDNN is fast for undilated 3x3 kernels (and smaller) at either stride.
    return (max(k) > 3 or max(d) > 1) and all(
        0 <= p[i] <= d[i] * (k[i] - 1) and (s[i] == 1 or (s[i] == 2 and d[i] <= 2)) for i in range(2))


class DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.dilation = stride, padding, dilation
        # Where the weight's gradient goes: a first-order architecture step asks autograd for the
        # alphas' gradients only, and the engine tells built-in convolutions to skip the weight's.
        ctx.weight_edge = torch.autograd.graph.get_gradient_edge(weight) if weight.requires_grad else None
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        s, p, d = ctx.stride, ctx.padding, ctx.dilation
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(grad, weight, tuple(x.shape[2:]), s, p, d)
        if ctx.needs_input_grad[1] and _will_execute(ctx.weight_edge.node):
            grad_w = weight_grad(grad, x, tuple(weight.shape[2:]), s, p, d).to(memory_format=_format(weight))
        return grad_x, grad_w, None, None, None


def _will_execute(node: object) -> bool:
    """Whether this backward pass uses the gradient flowing into ``node``; True when unsure."""
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):
        # PyTorch refuses to answer for a leaf that autograd.grad() was asked for: it is used.
        return True


def _format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def _zeros_like_layout(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zeros of shape (N, C, h, w) in ``x``'s layout."""
    n, c = x.shape[:2]
    if _format(x) is torch.channels_last:
        return x.new_zeros(n, h, w, c).permute(0, 3, 1, 2)
    return x.new_zeros(n, c, h, w)


def _pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """``F.pad(x, pad)`` with zeros, channels-last kept: padded as an NHWC tensor, which takes a
    tenth of the time of padding the channels-last NCHW view on this CPU."""
    if _format(x) is torch.channels_last:
        return F.pad(x.permute(0, 2, 3, 1), (0, 0, *pad)).permute(0, 3, 1, 2)
    return F.pad(x, pad)


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], s: tuple[int, int],
                p: tuple[int, int], d: tuple[int, int]) -> torch.Tensor:
    k = weight.shape[2:]
    if s != (1, 1):
        # Back onto a stride-1 grid: output position i sits at s*i of the span the kernel swept.
        span = [size[i] + 2 * p[i] - d[i] * (k[i] - 1) for i in range(2)]
        spread = _zeros_like_layout(grad, *span)
        spread[:, :, : s[0] * (grad.shape[2] - 1) + 1: s[0], : s[1] * (grad.shape[3] - 1) + 1: s[1]] = grad
        grad = spread
    return F.conv2d(grad, weight.flip(2, 3), None, 1, tuple(d[i] * (k[i] - 1) - p[i] for i in range(2)), d,
                    grad.shape[1])


def _pieces(out_len: int, stride: int, dilation: int, kernel: int) -> list[tuple[int, ...]]:
    """One axis cut into undilated stride-1 problems: each piece is (g_start, g_step, x_start,
    x_step, k_start, k_step, taps): kernel taps ``k_start + k_step * q`` (q < taps) meet the padded
    input at ``x_start + x_step * (j + q)`` for the output positions ``g_start + g_step * j``."""
    if stride == 1:  # output phase a of a dilation d only meets input phase a
        return [(a, dilation, a, dilation, 0, 1, kernel) for a in range(min(dilation, out_len))]
    if dilation == 2:  # stride 2, dilation 2: every tap lands on the even positions
        return [(0, 1, 0, 2, 0, 1, kernel)]
    # stride 2, dilation 1: the even taps meet the even positions, the odd taps the odd ones
    return [(0, 1, a, 2, a, 2, (kernel - a + 1) // 2) for a in range(min(2, kernel))]


def weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], s: tuple[int, int],
                 p: tuple[int, int], d: tuple[int, int]) -> torch.Tensor:
    """``d loss / d weight`` of a depthwise convolution, from undilated 3x3 weight gradients."""
    axes = [_pieces(grad.shape[2 + i], s[i], d[i], kernel[i]) for i in range(2)]
    # Enough padding for every 3x3 block window of every piece; the extra zeros only meet kernel
    # positions past the real kernel, whose gradients are dropped.
    extra = []
    for i in range(2):
        need = max(x0 + xs * (3 * -(-taps // 3) + -(-(grad.shape[2 + i] - g0) // gs) - 2) + 1
                   for g0, gs, x0, xs, _, _, taps in axes[i])
        extra.append(max(p[i], need - x.shape[2 + i] - p[i]))
    fmt = _format(x)
    padded = _pad(x, (p[1], extra[1], p[0], extra[0]))
    c = x.shape[1]
    block = x.new_empty(c, 1, 3, 3)
    out = x.new_zeros(c, 1, *kernel)
    for gh0, ghs, xh0, xhs, kh0, khs, taps_h in axes[0]:
        for gw0, gws, xw0, xws, kw0, kws, taps_w in axes[1]:
            g = grad[:, :, gh0::ghs, gw0::gws].contiguous(memory_format=fmt)
            g_h, g_w = g.shape[2:]
            sub = padded[:, :, xh0::xhs, xw0::xws]
            for bh in range(0, taps_h, 3):
                for bw in range(0, taps_w, 3):
                    window = sub[:, :, bh: bh + g_h + 2, bw: bw + g_w + 2].contiguous(memory_format=fmt)
                    part = torch.ops.aten.convolution_backward(
                        g, window, block, None, [1, 1], [0, 0], [1, 1], False, [0, 0], c, [False, True, False])[1]
                    rh, rw = min(3, taps_h - bh), min(3, taps_w - bw)
                    u, v = kh0 + khs * bh, kw0 + kws * bw
                    out[:, :, u: u + khs * rh: khs, v: v + kws * rw: kws] += part[:, :, :rh, :rw]
    return out


def depthwise_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` with the fast backward pass (``conv`` must satisfy :func:`applies`)."""
    return DepthwiseConv.apply(x, conv.weight, tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))


class FastDepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters, same state dict) whose training backward pass is the fast one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # CPU only: cuDNN's depthwise kernels are fast for every kernel size and dilation.
        if (self.training and torch.is_grad_enabled() and x.device.type == "cpu"
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()):
            return depthwise_conv2d(x, self)
        return super().forward(x)


def enable_fast_depthwise(module: nn.Module) -> int:
    """Give every applicable depthwise convolution under ``module`` the fast backward; returns how many.

    Only the class of the convolution changes (``FastDepthwiseConv2d`` is an ``nn.Conv2d``);
    :func:`disable_fast_depthwise` changes it back. Nothing happens when the environment variable
    ``NNI_VISPLUGIN_FAST_DEPTHWISE`` is 0.
    """
    if os.environ.get(_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return 0
    count = 0
    for m in module.modules():
        if type(m) is nn.Conv2d and applies(m):
            m.__class__ = FastDepthwiseConv2d
            count += 1
    return count


def disable_fast_depthwise(module: nn.Module) -> None:
    for m in module.modules():
        if type(m) is FastDepthwiseConv2d:
            m.__class__ = nn.Conv2d


@contextlib.contextmanager
def fast_depthwise(module: nn.Module):
    """:func:`enable_fast_depthwise` on ``module`` for the duration of the block, undone after it."""
    enable_fast_depthwise(module)
    try:
        yield module
    finally:
        disable_fast_depthwise(module)
