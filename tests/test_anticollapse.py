"""PC-DARTS, the anti-collapse regularisers and the health monitor, against their definitions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.strategies.darts import DartsStrategy
from nni_visplugin.nas.strategies.base import split_params
from nni_visplugin.nas.relax import MixedInput, MixedOp, arch_parameters, channel_shuffle
from nni_visplugin.nas.health import alpha_entropy, count_skips, op_alphas
from nni_visplugin.nas.derive import derive_architecture

from helpers.spaces import tiny_space  # noqa: E402


def _supernet(dtype=torch.float64, **settings):
    torch.manual_seed(0)
    supernet = DartsStrategy(epochs=2, **settings).build_supernet(tiny_space("darts_cell")).to(dtype)
    with torch.no_grad():
        for a in arch_parameters(supernet).values():
            a.copy_(torch.randn(a.shape, dtype=dtype))
    return supernet


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


@pytest.mark.parametrize("reduction", [False, True])
def test_partial_channel_edge_is_the_pc_darts_formula(reduction):
    """f(x) = shuffle(concat(sum_i w_i op_i(x[:C/K]), bypass(x[C/K:])), K), bypass = 2x2 max-pool
    on a reduction edge, identity otherwise (PC-DARTS, eq. 2 and its code's reduction case)."""
    supernet = _supernet(partial_channels=2)
    edges = [m for m in supernet.modules() if isinstance(m, MixedOp)]
    edge = next(e for e in edges if e.label.startswith("reduce" if reduction else "normal") and
                (not reduction or e.label.endswith("_0")))
    assert edge.partial == 2
    c = edge.candidates[1][1].num_features * 2 if not isinstance(edge.candidates[1], torch.nn.Identity) else None
    x = torch.randn(3, 2 * edge.candidates[2][1].num_features, 7, 7, dtype=torch.float64)  # odd size on purpose
    edge.eval()
    w = F.softmax(edge.alpha, -1)
    part, rest = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2:]
    mixed = sum(w[i] * op(part) for i, op in enumerate(edge.candidates) if not edge.zero[i])
    if reduction:
        rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
    expected = channel_shuffle(torch.cat([mixed, rest], 1), 2)
    assert torch.allclose(edge(x), expected)
    assert c is None or c == x.shape[1]


def test_partial_channels_cut_the_candidates_and_keep_the_supernet_runnable():
    full = _supernet()
    pc = _supernet(partial_channels=2, edge_norm=True)
    n_full = sum(p.numel() for n, p in full.named_parameters() if "candidates" in n)
    n_pc = sum(p.numel() for n, p in pc.named_parameters() if "candidates" in n)
    assert n_pc < 0.6 * n_full  # pointwise convs shrink ~4x, depthwise ~2x
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert pc(x).shape == full(x).shape == (4, 3)
    with pytest.raises(ValueError, match="partial_channels=3 must divide"):
        _supernet(partial_channels=3)
    with pytest.raises(TypeError, match="cannot be rebuilt at another width"):
        DartsStrategy(partial_channels=2).build_supernet(tiny_space("seed_cells"))


def test_pc_darts_alpha_and_beta_gradients_match_finite_differences():
    supernet = _supernet(partial_channels=2, edge_norm=True)
    supernet.eval()  # fixed batch-norm statistics: the loss is a smooth function of alpha
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    _, _, alphas = split_params(supernet)
    assert any(isinstance(m, MixedInput) and m.alpha is not None for m in supernet.modules())
    loss = F.cross_entropy(supernet(x), y)
    analytic = torch.autograd.grad(loss, alphas)
    h = 1e-6
    pick = torch.Generator().manual_seed(0)
    for a, g in zip(alphas, analytic):  # two entries of every parameter (each edge's and node's)
        for i in torch.randperm(a.numel(), generator=pick)[:2].tolist():
            with torch.no_grad():
                a.view(-1)[i] += h
                up = F.cross_entropy(supernet(x), y).item()
                a.view(-1)[i] -= 2 * h
                down = F.cross_entropy(supernet(x), y).item()
                a.view(-1)[i] += h
            assert (up - down) / (2 * h) == pytest.approx(g.view(-1)[i].item(), rel=1e-4, abs=1e-8)


def test_edge_normalisation_weighs_each_edge_in_derivation():
    supernet = _supernet(edge_norm=True)
    node = next(m for m in supernet.modules() if isinstance(m, MixedInput) and m.label == "normal/input_1")
    ops = {m.label: m for m in supernet.modules() if isinstance(m, MixedOp)}
    with torch.no_grad():
        for e in node.edge_labels:  # equal operation strengths on every edge of the node ...
            ops[e].alpha.copy_(torch.tensor([0.0, 0, 0, 5, 0, 0, 0, 0]))
        node.alpha.copy_(torch.tensor([0.0, 3.0, 2.0]))  # ... so the node's own edge weights decide
    assert derive_architecture(supernet)["normal/input_1"] == [1, 2]
    with torch.no_grad():
        node.alpha.copy_(torch.tensor([3.0, 0.0, 2.0]))
    assert derive_architecture(supernet)["normal/input_1"] == [0, 2]


def test_auxiliary_skip_adds_beta_x_on_shape_preserving_edges_and_decays_linearly(tiny_images):
    supernet = _supernet()
    edge = next(m for m in supernet.modules() if isinstance(m, MixedOp) and m.label.startswith("normal"))
    edge.eval()
    x = torch.randn(2, edge.candidates[2][1].num_features, 8, 8, dtype=torch.float64)
    plain = edge(x)
    edge.aux_skip = 0.7
    assert torch.allclose(edge(x), plain + 0.7 * x)

    strategy = DartsStrategy(epochs=4, aux_skip=1.0)
    seen = []
    original = strategy.arch_step

    def spy(state, *args):
        seen.append(next(m for m in state.supernet.modules() if isinstance(m, MixedOp)).aux_skip)
        return original(state, *args)

    strategy.arch_step = spy
    x, y = tiny_images
    strategy.search(tiny_space("darts_cell"), TensorLoader(x[:24], y[:24], 24), TensorLoader(x[24:], y[24:], 24))
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25])  # beta_t = beta_0 (1 - t / T)


def test_beta_regularisation_gradient_is_the_gradient_of_its_definition():
    supernet = _supernet(dtype=torch.float64)
    strategy = DartsStrategy(epochs=4, beta_reg=2.0)
    _, _, alphas = split_params(supernet)
    # lambda_t = lambda_max * t / T: nothing in the first epoch (beta-DARTS's linear schedule from 0).
    assert all(float(g.abs().max()) == 0.0 for g in strategy.beta_reg_grad(supernet, alphas, epoch=0))
    grads = strategy.beta_reg_grad(supernet, alphas, epoch=1)
    lam = 2.0 * 1 / 4
    ops = [m.alpha for m in supernet.modules() if isinstance(m, MixedOp)]
    ops = list({id(a): a for a in ops}.values())  # one per label

    def reg():
        return (lam * torch.stack([torch.logsumexp(a, -1) for a in ops]).mean()).item()

    h = 1e-6
    for a, g in zip(alphas, grads):
        for i in range(a.numel()):
            with torch.no_grad():
                a.view(-1)[i] += h
                up = reg()
                a.view(-1)[i] -= 2 * h
                down = reg()
                a.view(-1)[i] += h
            assert (up - down) / (2 * h) == pytest.approx(g.view(-1)[i].item(), abs=1e-8)


def test_alpha_entropy_spans_uniform_to_one_hot():
    supernet = _supernet()
    with torch.no_grad():
        for a in op_alphas(supernet):
            a.zero_()
    assert alpha_entropy(supernet) == pytest.approx(1.0)
    with torch.no_grad():
        for a in op_alphas(supernet):
            a[0] = 60.0
    assert alpha_entropy(supernet) < 1e-6


def test_skip_count_looks_at_the_kept_edges_of_the_normal_cell_only():
    supernet = _supernet()
    arch = derive_architecture(supernet)
    arch = {k: ("skip_connect" if k.startswith(("normal/op", "reduce/op")) else v) for k, v in arch.items()}
    kept = sum(len(v) for k, v in arch.items() if k.startswith("normal/input"))
    assert count_skips(supernet, arch) == kept  # every kept normal edge is a skip; dropped ones do not count
    arch["normal/op_0_0" if arch["normal/input_0"][0] == 0 else "normal/op_0_1"] = "sep_conv_3x3"
    assert count_skips(supernet, arch) == kept - 1


def _search(tiny_images, **settings):
    x, y = tiny_images
    strategy = DartsStrategy(**settings)
    torch.manual_seed(0)
    out = strategy.search(tiny_space("darts_cell"), TensorLoader(x[:24], y[:24], 12), TensorLoader(x[24:], y[24:], 12),
                          TensorLoader(x, y, 48))
    return strategy, out


def test_every_epoch_records_entropy_and_skips(tiny_images):
    _, out = _search(tiny_images, epochs=2)
    for record in out.history:
        assert 0 <= record["alpha_entropy"] <= 1 and isinstance(record["normal_skips"], int)
    assert out.history[1]["alpha_entropy"] < out.history[0]["alpha_entropy"] or math.isclose(
        out.history[1]["alpha_entropy"], out.history[0]["alpha_entropy"], abs_tol=1e-3)


def test_early_stop_on_skip_connections(tiny_images):
    """With skip_connect the only real operation, every kept edge of the normal cell is a skip (2 nodes
    x 2 inputs): the rule fires at the first epoch where alpha has moved, after the warm-up."""
    from nni_visplugin import create_space
    from helpers.spaces import tiny_kwargs

    x, y = tiny_images
    space = create_space("darts_cell", **tiny_kwargs("darts_cell"), primitives=["none", "skip_connect"])
    for warmup, expected_epochs in ((0, 1), (2, 3)):
        strategy = DartsStrategy(epochs=6, warmup_epochs=warmup, early_stop="skips", early_stop_skips=4)
        out = strategy.search(space, TensorLoader(x[:24], y[:24], 12), TensorLoader(x[24:], y[24:], 12))
        assert [r["normal_skips"] for r in out.history] == [4] * expected_epochs
        assert [("early_stop" in r) for r in out.history] == [False] * (expected_epochs - 1) + [True]
        assert "4 skip connections in the normal cell (rule: skips >= 4)" == out.history[-1]["early_stop"]
    strategy = DartsStrategy(epochs=2, early_stop="skips", early_stop_skips=5)  # never reached
    assert len(strategy.search(space, TensorLoader(x, y, 24), TensorLoader(x, y, 24)).history) == 2


def test_early_stop_when_the_ranking_is_stable(tiny_images):
    # alpha barely moves at this learning rate: the ranking is stable from the start.
    _, out = _search(tiny_images, epochs=8, arch_lr=1e-9, early_stop="stable", early_stop_patience=2)
    assert len(out.history) == 3 and "ranking unchanged for 2 epochs" in out.history[-1]["early_stop"]


@pytest.mark.parametrize("bad", [{"partial_channels": 0}, {"aux_skip": -1.0}, {"beta_reg": -0.1},
                                 {"early_stop": "sometimes"}, {"early_stop_patience": 0}, {"edge_norm": 1}])
def test_bad_settings_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        DartsStrategy(**bad)


def test_auxiliary_skip_on_a_stride_2_edge_is_beta_times_its_factorized_reduction():
    """DARTS-'s reference adds beta * FactorizedReduce(x) on a reduction edge, where beta * x cannot be
    added; written out here from the definition (ReLU, two offset 1x1 stride-2 convolutions, batch norm)."""
    torch.manual_seed(0)
    supernet = DartsStrategy(epochs=2, aux_skip=1.0).build_supernet(tiny_space("darts_cell")).to(torch.float64)
    reduce_edges = [m for m in supernet.modules() if isinstance(m, MixedOp) and m.label.startswith("reduce")
                    and m.label.endswith(("_0", "_1"))]  # the edges from the cell's two inputs
    assert reduce_edges and all(m.aux_reduce is not None for m in reduce_edges)
    assert all(m.aux_reduce is None for m in supernet.modules() if isinstance(m, MixedOp)
               and m.label.startswith("normal"))
    edge = reduce_edges[0]
    edge.eval()
    c = edge.aux_reduce.conv_a.in_channels
    x = torch.randn(2, c, 8, 8, dtype=torch.float64)
    edge.aux_skip = 0.0
    plain = edge(x)
    edge.aux_skip = 0.4
    fr = edge.aux_reduce
    r = torch.relu(x)
    a = torch.nn.functional.conv2d(r, fr.conv_a.weight, stride=2)
    b = torch.nn.functional.conv2d(torch.nn.functional.pad(r, (0, 1, 0, 1))[:, :, 1:, 1:], fr.conv_b.weight, stride=2)
    h = torch.cat([a, b], 1)
    bn = (h - fr.bn.running_mean[None, :, None, None]) / torch.sqrt(fr.bn.running_var[None, :, None, None] + fr.bn.eps)
    assert torch.allclose(edge(x), plain + 0.4 * bn)
    # Its parameters are weights: the weight optimiser moves them.
    names, _, _ = split_params(supernet)
    assert any("aux_reduce" in n for n in names)


def test_stable_ranking_rule_ranks_the_learnable_operations_only():
    """DARTS+ criterion 2: the ranking of the learnable operations' alphas; pools, skips, none and the
    edge-normalisation weights may change order without resetting the count."""
    strategy = DartsStrategy(epochs=10, early_stop="stable", early_stop_patience=2)
    supernet = strategy.build_supernet(tiny_space("darts_cell"))
    from nni_visplugin.nas.relax import learnable_candidates

    strategy._learnable = learnable_candidates(supernet)
    label = "normal/op_0_0"
    names = next(m.names for m in supernet.modules() if isinstance(m, MixedOp) and m.label == label)
    convs = [i for i, n in enumerate(names) if "conv" in n]
    free = [i for i, n in enumerate(names) if "conv" not in n]
    assert strategy._learnable[label] == convs  # the convolutions of the DARTS primitives

    def record(epoch, swap_free):
        alpha = [0.0] * len(names)
        for rank, i in enumerate(convs):
            alpha[i] = 1.0 - 0.1 * rank
        a, b = free[0], free[1]
        alpha[a], alpha[b] = (0.5, 0.6) if swap_free else (0.6, 0.5)
        return {"epoch": epoch, "alphas": {label: {"alpha": alpha}, "normal/input_1": {"alpha": [epoch % 2, 0, 1]}}}

    history = [record(e, swap_free=e % 2 == 1) for e in range(3)]
    assert "ranking unchanged for 2 epochs" in strategy._stop_reason(history)
    moved = [dict(r) for r in history]
    moved[2] = {"epoch": 2, "alphas": {label: {"alpha": [-a for a in history[2]["alphas"][label]["alpha"]]}}}
    assert strategy._stop_reason(moved) is None
