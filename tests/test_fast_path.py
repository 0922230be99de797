"""The fast paths compute what the straightforward code computes.

Channels-last layout (the CPU default, NNI_VISPLUGIN_CHANNELS_LAST=0 turns it off) only reorders
sums: the supernet's loss and its alpha gradients, a whole search and a retraining must agree with
the contiguous reference up to rounding. And the strided stem of darts_cell (a space option, not a
fast path) must change the resolution the cells see and nothing else.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nni_visplugin import create_space
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.strategies.darts import DartsStrategy
from nni_visplugin.nas.strategies.base import split_params
from nni_visplugin.nas.relax import arch_parameters
from nni_visplugin.nas.training import memory_format, to_layout, train_from_scratch

from helpers.spaces import tiny_space  # noqa: E402


def _data(n=24, side=8, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, side, side, generator=g), torch.randint(0, 3, (n,), generator=g)


def _loss_and_alpha_grads(fmt: torch.memory_format, **settings):
    torch.manual_seed(0)
    supernet = DartsStrategy(epochs=1, **settings).build_supernet(tiny_space("darts_cell")).double()
    with torch.no_grad():
        for a in arch_parameters(supernet).values():
            a.copy_(torch.randn(a.shape, dtype=torch.float64))
    supernet.to(memory_format=fmt).train()
    x, y = _data()
    x = x.double().contiguous(memory_format=fmt)
    _, _, alphas = split_params(supernet)
    loss = F.cross_entropy(supernet(x), y)
    return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, alphas)]


@pytest.mark.parametrize("settings", [{}, {"partial_channels": 2, "edge_norm": True}])
def test_channels_last_supernet_gives_the_reference_loss_and_alpha_gradients(settings):
    ref_loss, ref_grads = _loss_and_alpha_grads(torch.contiguous_format, **settings)
    loss, grads = _loss_and_alpha_grads(torch.channels_last, **settings)
    assert torch.allclose(loss, ref_loss, rtol=0, atol=1e-12)
    assert len(grads) == len(ref_grads) > 0
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-12)
        assert r.abs().sum() > 0  # gradients that could differ


def _search(monkeypatch, channels_last: bool):
    monkeypatch.setenv("NNI_VISPLUGIN_CHANNELS_LAST", "1" if channels_last else "0")
    assert memory_format("cpu") == (torch.channels_last if channels_last else torch.contiguous_format)
    torch.manual_seed(0)
    x, y = _data(48)
    strategy = DartsStrategy(epochs=2, arch_lr=0.05)
    return strategy.search(tiny_space("darts_cell"), TensorLoader(x[:24], y[:24], 12, shuffle=True, seed=0),
                           TensorLoader(x[24:], y[24:], 12, shuffle=True, seed=1))


def test_a_search_is_the_same_in_either_layout(monkeypatch):
    fast, ref = _search(monkeypatch, True), _search(monkeypatch, False)
    assert fast.arch == ref.arch
    for f, r in zip(fast.history, ref.history):
        assert f["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4)
        for label, snap in r["alphas"].items():
            assert f["alphas"][label]["alpha"] == pytest.approx(snap["alpha"], abs=1e-4)
    # the alphas moved, so the comparison is not between two untouched initialisations
    last = ref.history[-1]["alphas"]
    assert any(abs(a) > 1e-3 for snap in last.values() for a in snap["alpha"])


def test_training_runs_channels_last_and_matches_the_reference(monkeypatch):
    losses = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("NNI_VISPLUGIN_CHANNELS_LAST", flag)
        torch.manual_seed(0)
        model = create_space("darts_cell", width=4, num_cells=2, in_channels=3, image_size=8, num_classes=3)
        x, y = _data(channels=3)
        losses[flag] = train_from_scratch(model, TensorLoader(x, y, 8, shuffle=True, seed=0), 2)
        conv = model.stem[0]  # 3 input channels, 3x3 kernel: the two layouts differ
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == (flag == "1")
    assert losses["1"] == pytest.approx(losses["0"], rel=1e-4)


def test_to_layout_leaves_non_image_tensors_alone(monkeypatch):
    monkeypatch.setenv("NNI_VISPLUGIN_CHANNELS_LAST", "1")
    assert to_layout(torch.randn(4, 3, 5, 5), "cpu").is_contiguous(memory_format=torch.channels_last)
    y = torch.arange(4)
    assert to_layout(y, "cpu").data_ptr() == y.data_ptr()


def test_strided_stem_quarters_the_cells_pixels_and_keeps_the_weights():
    kwargs = dict(width=4, num_cells=3, in_channels=1, image_size=28, num_classes=10)
    plain = create_space("darts_cell", **kwargs)
    strided = create_space("darts_cell", stem_stride=2, **kwargs)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in strided.parameters())
    seen = {}
    for name, model in (("plain", plain), ("strided", strided)):
        hook = model.cells[0].register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[1].shape))
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        hook.remove()
    assert seen["plain"][-2:] == (28, 28) and seen["strided"][-2:] == (14, 14)
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2"):
        create_space("darts_cell", stem_stride=3, **kwargs)


def _step(checkpoint_edges: bool, **settings):
    """One training-mode forward and backward of a float64 supernet: loss, alpha and weight
    gradients, and the batch-norm running statistics afterwards."""
    torch.manual_seed(0)
    strategy = DartsStrategy(epochs=1, checkpoint_edges=checkpoint_edges, **settings)
    supernet = strategy.build_supernet(tiny_space("darts_cell")).double().train()
    with torch.no_grad():
        for a in arch_parameters(supernet).values():
            a.copy_(torch.randn(a.shape, dtype=torch.float64))
    x, y = _data()
    _, weights, alphas = split_params(supernet)
    loss = F.cross_entropy(supernet(x.double()), y)
    grads = torch.autograd.grad(loss, alphas + weights, allow_unused=True)
    stats = {k: v.clone() for k, v in supernet.state_dict().items() if "running" in k or "num_batches" in k}
    return loss.detach(), grads, stats, supernet


@pytest.mark.parametrize("settings", [{}, {"partial_channels": 2, "edge_norm": True}, {"checkpoint_share": 0.5}])
def test_checkpointed_edges_give_the_same_loss_gradients_and_running_stats(settings):
    share = settings.get("checkpoint_share", 1.0)
    ref_loss, ref_grads, ref_stats, _ = _step(False, **{k: v for k, v in settings.items() if k != "checkpoint_share"})
    loss, grads, stats, supernet = _step(True, **settings)
    from nni_visplugin.nas.relax import MixedOp

    flags = [m.checkpoint for m in supernet.modules() if isinstance(m, MixedOp)]
    # the first ceil(share * n) edges in module order, the first cells', recompute; the rest do not
    assert flags == [i < -(-len(flags) * share // 1) for i in range(len(flags))] and any(flags)
    assert torch.allclose(loss, ref_loss, rtol=0, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if r is not None:
            assert torch.allclose(g, r, rtol=1e-9, atol=1e-12)
    # the recomputation in the backward pass must not update the running statistics a second time
    assert stats.keys() == ref_stats.keys() and len(stats) > 0
    for k in stats:
        assert torch.equal(stats[k], ref_stats[k]), k


def test_checkpointed_edges_refuse_second_order():
    with pytest.raises(ValueError, match="order=1 only"):
        DartsStrategy(checkpoint_edges=True, order=2)
    for share in (0, 1.5):
        with pytest.raises(ValueError, match=r"checkpoint_share must be a number in \(0, 1\]"):
            DartsStrategy(checkpoint_edges=True, checkpoint_share=share)


def _fused_step(monkeypatch, fused: bool, **settings):
    from nni_visplugin.nas import relax as sn_module

    monkeypatch.setattr(sn_module.MixedOp, "fused", fused)
    calls = {"scaled_norm": 0}
    real = sn_module.scaled_batch_norm

    def counting(*args):
        calls["scaled_norm"] += 1
        return real(*args)

    monkeypatch.setattr(sn_module, "scaled_batch_norm", counting)
    loss, grads, stats, supernet = _step(settings.pop("checkpoint_edges", False), **settings)
    return loss, grads, stats, supernet, calls["scaled_norm"]


@pytest.mark.parametrize("settings", [{}, {"partial_channels": 2, "edge_norm": True}, {"checkpoint_edges": True},
                                      {"aux_skip": 0.5}])
def test_fused_edges_give_the_reference_loss_gradients_and_running_stats(monkeypatch, settings):
    ref_loss, ref_grads, ref_stats, _, ref_calls = _fused_step(monkeypatch, False, **settings)
    loss, grads, stats, supernet, calls = _fused_step(monkeypatch, True, **settings)
    from nni_visplugin.nas.relax import MixedOp

    # every candidate that closes with an affine-free batch norm (the convolutions and the pools)
    # took its weight inside it, once per forward (plus once per recomputation when checkpointed)
    edges = [m for m in supernet.modules() if isinstance(m, MixedOp)]
    closing = sum(1 for m in edges for op in m.candidates
                  if isinstance(op, torch.nn.Sequential) and isinstance(op[-1], (torch.nn.BatchNorm2d, torch.nn.Sequential)))
    assert ref_calls == 0 and calls == closing * (2 if settings.get("checkpoint_edges") else 1) > 0
    assert torch.allclose(loss, ref_loss, rtol=0, atol=1e-12)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if r is not None:
            assert torch.allclose(g, r, rtol=1e-9, atol=1e-12)
    assert stats.keys() == ref_stats.keys() and len(stats) > 0
    for k in stats:  # the same statistics, summed in another order by the weighted kernel
        assert torch.allclose(stats[k], ref_stats[k], rtol=1e-12, atol=1e-15), (k, (stats[k] - ref_stats[k]).abs().max())


def test_fused_edges_in_float32_channels_last_at_full_width(monkeypatch):
    """The layout and width a CPU search runs at: the batch norm's channels-last kernel reads its
    weight as a dense vector, so a broadcast (stride-0) scale gave NaN gradients here."""
    from nni_visplugin.nas import relax as sn_module

    def loss_and_grads(fused: bool):
        monkeypatch.setattr(sn_module.MixedOp, "fused", fused)
        torch.manual_seed(0)
        space = create_space("darts_cell", width=16, num_cells=3, image_size=16, in_channels=3, num_classes=10)
        supernet = DartsStrategy(epochs=1).build_supernet(space).train().to(memory_format=torch.channels_last)
        x, y = _data(8, 16, channels=3)
        _, _, alphas = split_params(supernet)
        loss = F.cross_entropy(supernet(x.contiguous(memory_format=torch.channels_last)), y)
        return loss.detach(), torch.autograd.grad(loss, alphas)

    ref_loss, ref_grads = loss_and_grads(False)
    loss, grads = loss_and_grads(True)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        assert torch.allclose(g, r, rtol=1e-3, atol=1e-6)


def test_hooked_candidates_run_whole(monkeypatch):
    """A candidate with a forward hook (someone measuring it) is run as a module, not unrolled."""
    from nni_visplugin.nas.relax import MixedOp

    torch.manual_seed(0)
    supernet = DartsStrategy(epochs=1).build_supernet(tiny_space("darts_cell")).train()
    edge = next(m for m in supernet.modules() if isinstance(m, MixedOp))
    seen = []
    conv = next(i for i, n in enumerate(edge.names) if n.startswith("sep_conv"))
    edge.candidates[conv].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    supernet(_data(4)[0])
    assert len(seen) == 1
