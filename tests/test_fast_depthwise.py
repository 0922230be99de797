"""The fast depthwise backward pass gives PyTorch's gradients, and only where it is switched on.

Both gradients are checked against ``F.conv2d``'s own in float64, over the kernel sizes, dilations,
strides, paddings and map sizes the spaces use (7x7, 4x4 and 1x1 maps of 28x28 inputs, odd and
even sizes), in both layouts; then inside a whole supernet step and a retraining.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_visplugin import create_space
from nni_visplugin.nas import fastconv
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.fastconv import FastDepthwiseConv2d, applies, depthwise_conv2d, enable_fast_depthwise
from nni_visplugin.nas.fixed import build_fixed_model
from nni_visplugin.nas.strategies.darts import DartsStrategy
from nni_visplugin.nas.strategies.base import split_params
from nni_visplugin.nas.relax import arch_parameters
from nni_visplugin.nas.training import train_from_scratch

from helpers.spaces import tiny_space  # noqa: E402

CASES = [  # kernel, dilation, stride
    (5, 1, 1), (3, 2, 1), (5, 2, 1), (7, 1, 1), ((3, 5), (2, 1), 1), ((5, 3), (1, 2), 1),
    (5, 1, 2), (7, 1, 2), (3, 2, 2), (5, 2, 2), ((3, 5), (2, 1), 2),
]
SIZES = [(7, 7), (4, 4), (1, 1), (8, 5), (9, 10), (2, 3)]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("kernel,dilation,stride", CASES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gradients_equal_pytorchs_in_float64(kernel, dilation, stride, layout):
    k, d = _pair(kernel), _pair(dilation)
    g = torch.Generator().manual_seed(0)
    checked = 0
    for h, w in SIZES:
        for padding in ((d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2), (0, 0), (1, d[1] * (k[1] - 1))):
            if h + 2 * padding[0] <= d[0] * (k[0] - 1) or w + 2 * padding[1] <= d[1] * (k[1] - 1):
                continue  # no output
            conv = nn.Conv2d(6, 6, k, stride, padding, d, groups=6, bias=False).double().to(memory_format=layout)
            assert applies(conv)
            x = torch.randn(3, 6, h, w, dtype=torch.float64, generator=g).contiguous(memory_format=layout)
            x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
            y_ref, y_fast = conv(x_ref), depthwise_conv2d(x_fast, conv)
            assert torch.equal(y_ref, y_fast)  # the forward pass is PyTorch's own
            grad = torch.randn(y_ref.shape, dtype=torch.float64, generator=g)
            ref = torch.autograd.grad(y_ref, (x_ref, conv.weight), grad)
            fast = torch.autograd.grad(y_fast, (x_fast, conv.weight), grad)
            for r, f in zip(ref, fast):
                assert f.shape == r.shape
                assert torch.allclose(f, r, rtol=1e-10, atol=1e-12), (h, w, padding, (f - r).abs().max())
            checked += 1
    assert checked >= 6


def test_gradcheck_against_finite_differences():
    def fn(x, w):
        return fastconv.DepthwiseConv.apply(x, w, (2, 1), (2, 2), (2, 1))

    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, w))


def test_applies_only_where_it_is_faster_and_correct():
    assert applies(nn.Conv2d(8, 8, 5, 1, 2, groups=8, bias=False))
    assert applies(nn.Conv2d(8, 8, 3, 2, 2, 2, groups=8, bias=False))
    assert not applies(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False))  # oneDNN's fast kernel
    assert not applies(nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False))
    assert not applies(nn.Conv2d(8, 8, 5, 1, 2, bias=False))  # dense
    assert not applies(nn.Conv2d(8, 16, 5, 1, 2, groups=8, bias=False))  # a channel multiplier
    assert not applies(nn.Conv2d(8, 8, 5, 1, 2, groups=8, bias=True))
    assert not applies(nn.Conv2d(8, 8, 5, 3, 2, groups=8, bias=False))  # stride 3
    assert not applies(nn.Conv2d(8, 8, 3, 2, 3, 3, groups=8, bias=False))  # stride 2 with dilation 3
    assert not applies(nn.Conv2d(8, 8, 5, 1, "same", groups=8, bias=False))
    assert not applies(nn.Conv2d(8, 8, 5, 1, 2, groups=8, bias=False, padding_mode="reflect"))


def test_weight_gradient_is_skipped_when_only_other_gradients_are_asked_for(monkeypatch):
    """A first-order architecture step asks for the alphas' gradients only: no weight gradient is
    computed, as built-in convolutions skip theirs."""
    calls = []
    real = fastconv.weight_grad
    monkeypatch.setattr(fastconv, "weight_grad", lambda *a: calls.append(1) or real(*a))
    conv = nn.Conv2d(4, 4, 5, 1, 2, groups=4, bias=False).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    out = depthwise_conv2d(x * scale, conv).square().sum()
    (g_scale,) = torch.autograd.grad(out, scale, retain_graph=True)
    assert calls == []
    ref = F.conv2d(x * scale, conv.weight, None, 1, 2, 1, 4).square().sum()
    assert torch.allclose(g_scale, torch.autograd.grad(ref, scale)[0])
    out.backward()
    assert calls == [1] and conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def _supernet_step(monkeypatch, fast: bool, **settings):
    monkeypatch.setenv("NNI_VISPLUGIN_FAST_DEPTHWISE", "1" if fast else "0")
    torch.manual_seed(0)
    space = tiny_space("darts_cell")
    supernet = DartsStrategy(epochs=1, **settings).build_supernet(space).double().train()
    n_fast = sum(type(m) is FastDepthwiseConv2d for m in supernet.modules())
    with torch.no_grad():
        for a in arch_parameters(supernet).values():
            a.copy_(torch.randn(a.shape, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (12,), generator=g)
    _, weights, alphas = split_params(supernet)
    loss = F.cross_entropy(supernet(x), y)
    return loss.detach(), torch.autograd.grad(loss, alphas + weights, allow_unused=True), n_fast


@pytest.mark.parametrize("settings", [{}, {"partial_channels": 2, "edge_norm": True}, {"checkpoint_edges": True}])
def test_supernet_step_equals_the_reference(monkeypatch, settings):
    ref_loss, ref_grads, ref_n = _supernet_step(monkeypatch, False, **settings)
    loss, grads, n = _supernet_step(monkeypatch, True, **settings)
    # the 5x5 and dilated candidates of every edge, strided on the reduction edges
    assert ref_n == 0 and n > 0
    assert torch.allclose(loss, ref_loss, rtol=0, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if r is not None:
            assert torch.allclose(g, r, rtol=1e-9, atol=1e-12)


def test_retraining_uses_it_and_hands_back_plain_convolutions(monkeypatch):
    used = []
    real = fastconv.depthwise_conv2d
    monkeypatch.setattr(fastconv, "depthwise_conv2d", lambda x, conv: used.append(1) or real(x, conv))
    torch.manual_seed(0)
    kwargs = dict(width=4, num_cells=2, in_channels=1, image_size=8, num_classes=3)
    arch: dict = {}
    create_space("darts_cell", **kwargs).random(memo=arch, random_state=np.random.RandomState(0))
    arch = {k: ("dil_conv_5x5" if k.split("/")[1].startswith("op") else v) for k, v in arch.items()}
    model = build_fixed_model("darts_cell", kwargs, arch)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    train_from_scratch(model, TensorLoader(x, y, 8, shuffle=True, seed=0), 1)
    assert used  # the candidates' 5x5 and dilated convolutions took the fast backward
    assert not any(type(m) is FastDepthwiseConv2d for m in model.modules())


def test_plain_convolutions_come_back_when_training_fails():
    """The swap is undone even when the block raises (a non-finite loss stops the retraining)."""
    model = nn.Sequential(nn.Conv2d(2, 2, 5, 1, 2, groups=2, bias=False), nn.Flatten(), nn.Linear(72, 3))
    with pytest.raises(RuntimeError, match="stop"):
        with fastconv.fast_depthwise(model):
            assert type(model[0]) is FastDepthwiseConv2d
            raise RuntimeError("stop")
    assert type(model[0]) is nn.Conv2d
    x, y = torch.full((4, 2, 6, 6), float("nan")), torch.zeros(4, dtype=torch.long)
    with pytest.raises(FloatingPointError):
        train_from_scratch(model, TensorLoader(x, y, 4, shuffle=False, seed=0), 1)
    assert type(model[0]) is nn.Conv2d


def test_evaluation_and_tracing_see_a_plain_convolution():
    conv = nn.Conv2d(4, 4, 5, 1, 2, groups=4, bias=False)
    model = nn.Sequential(conv)
    assert enable_fast_depthwise(model) == 1 and type(conv) is FastDepthwiseConv2d
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert conv(x).grad_fn is None
    assert type(conv(x).grad_fn).__name__ == "DepthwiseConvBackward"  # training with gradients: the fast one
    conv.eval()
    assert "Convolution" in type(conv(x).grad_fn).__name__
    traced = torch.jit.trace(model, x)
    assert torch.allclose(traced(x), model(x))


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("NNI_VISPLUGIN_FAST_DEPTHWISE", "0")
    model = nn.Sequential(nn.Conv2d(4, 4, 5, 1, 2, groups=4, bias=False))
    assert enable_fast_depthwise(model) == 0 and type(model[0]) is nn.Conv2d
