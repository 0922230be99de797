"""The DARTS strategy against its definition (Liu et al., ICLR 2019)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nni_visplugin import create_space, create_strategy
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.strategies.darts import DartsStrategy, unrolled_arch_gradient
from nni_visplugin.nas.strategies.base import split_params
from nni_visplugin.nas.relax import MixedInput, MixedOp, arch_parameters
from nni_visplugin.nas.derive import derive_architecture

from helpers.spaces import tiny_space  # noqa: E402  (tests/spaces_helpers.py)


def _tiny_supernet(space_name: str = "seed_cells", dtype=torch.float64):
    torch.manual_seed(0)
    space = tiny_space(space_name)
    supernet = DartsStrategy(epochs=1).build_supernet(space).to(dtype)
    # Spread alphas away from uniform so every term of the gradient matters.
    with torch.no_grad():
        for a in arch_parameters(supernet).values():
            a.copy_(torch.randn(a.shape, dtype=dtype))
    return supernet


def _batch(seed: int, n: int = 6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("space_name", ["seed_cells", "darts_cell"])
def test_second_order_gradient_matches_finite_differences(space_name):
    """grad_alpha of L_a(w - xi * grad_w L_w(w, alpha), alpha), computed by central differences in
    alpha, agrees with the unrolled approximation with its finite-difference Hessian-vector product."""
    supernet = _tiny_supernet(space_name)
    names, weights, alphas = split_params(supernet)
    batch_w, batch_a = _batch(1), _batch(2)
    # A weight decay large enough that leaving it out of the virtual step fails the check below.
    xi, momentum, wd = 0.05, 0.9, 0.5
    bufs = [0.01 * torch.randn_like(w) for w in weights]
    buffers = {n: b.clone() for n, b in supernet.named_buffers()}

    def unrolled_loss() -> float:
        def loss(params, batch):
            out = functional_call(supernet, {**dict(zip(names, params)), **{k: v.clone() for k, v in buffers.items()}},
                                  (batch[0],))
            return F.cross_entropy(out, batch[1])

        g = torch.autograd.grad(loss(weights, batch_w), weights)
        w_virtual = [w - xi * (gi + wd * w + momentum * b) for w, gi, b in zip(weights, g, bufs)]
        return loss(w_virtual, batch_a).item()

    h = 1e-5
    numeric = []
    for a in alphas:
        grad = torch.zeros_like(a)
        for i in range(a.numel()):
            with torch.no_grad():
                a.view(-1)[i] += h
            up = unrolled_loss()
            with torch.no_grad():
                a.view(-1)[i] -= 2 * h
            down = unrolled_loss()
            with torch.no_grad():
                a.view(-1)[i] += h
            grad.view(-1)[i] = (up - down) / (2 * h)
        numeric.append(grad)

    # A small finite-difference radius in float64 makes the Hessian-vector product exact to ~1e-10;
    # the paper's 0.01 / ||grad|| is an approximation whose error grows at ReLU and max-pool kinks.
    analytic = unrolled_arch_gradient(supernet, F.cross_entropy, names, weights, alphas, batch_w, batch_a, xi=xi,
                                      momentum=momentum, weight_decay=wd, momentum_buffers=bufs, fd_scale=1e-5)
    num = torch.cat([g.flatten() for g in numeric])
    ana = torch.cat([g.flatten() for g in analytic])
    assert num.abs().max() > 1e-4  # the check is not vacuous
    assert torch.allclose(ana, num, rtol=1e-3, atol=1e-6), (ana - num).abs().max()

    # Each term matters: without the weight decay in the virtual step, or without the Hessian term
    # (first order), the same check fails.
    no_decay = unrolled_arch_gradient(supernet, F.cross_entropy, names, weights, alphas, batch_w, batch_a, xi=xi,
                                      momentum=momentum, weight_decay=0.0, momentum_buffers=bufs, fd_scale=1e-5)
    assert not torch.allclose(torch.cat([g.flatten() for g in no_decay]), num, rtol=1e-3, atol=1e-6)
    first_order = torch.autograd.grad(F.cross_entropy(supernet(batch_a[0]), batch_a[1]), alphas)
    assert not torch.allclose(torch.cat([g.flatten() for g in first_order]), num, rtol=1e-3, atol=1e-6)


def test_second_order_finite_difference_radius_is_scaled_by_the_gradient_norm():
    """Equation 8 with the paper's radius eps = 0.01 / ||grad_w' L_a(w', alpha)||, written out here."""
    supernet = _tiny_supernet("seed_cells")
    names, weights, alphas = split_params(supernet)
    batch_w, batch_a = _batch(1), _batch(2)
    xi = 0.3

    def crit(out, y):  # scaled so that the gradient norm is far from 1 and the radius matters
        return 40.0 * F.cross_entropy(out, y)

    buffers = {n: b.clone() for n, b in supernet.named_buffers()}

    def loss(params, batch):
        return crit(functional_call(supernet, {**dict(zip(names, params)), **{k: v.clone() for k, v in buffers.items()}},
                                    (batch[0],)), batch[1])

    g_w = torch.autograd.grad(loss(weights, batch_w), weights)
    w1 = [(w - xi * g).detach().requires_grad_() for w, g in zip(weights, g_w)]
    grads = torch.autograd.grad(loss(w1, batch_a), list(alphas) + w1)
    d_alpha, d_w = grads[: len(alphas)], grads[len(alphas):]
    norm = torch.sqrt(sum((d * d).sum() for d in d_w))

    def expected(eps):
        with torch.no_grad():
            plus = [w + eps * d for w, d in zip(weights, d_w)]
            minus = [w - eps * d for w, d in zip(weights, d_w)]
        gp = torch.autograd.grad(loss(plus, batch_w), alphas)
        gm = torch.autograd.grad(loss(minus, batch_w), alphas)
        return torch.cat([(da - xi * (p - m) / (2 * eps)).flatten() for da, p, m in zip(d_alpha, gp, gm)])

    got = torch.cat([g.flatten() for g in unrolled_arch_gradient(supernet, crit, names, weights, alphas, batch_w,
                                                                batch_a, xi=xi, fd_scale=0.01)])
    assert norm.item() > 5
    assert torch.allclose(got, expected(0.01 / norm), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(got, expected(torch.tensor(0.01)), rtol=1e-6, atol=1e-9)  # the unscaled radius


def test_first_order_step_uses_the_architecture_batch_then_the_weight_step_the_new_alpha():
    """One step of the search against Adam and SGD written out (their first steps): the architecture
    step on the architecture batch at the current weights, then the weight step on the weight batch
    at the updated alpha; the optimisers' settings are the configured ones."""
    supernet = _tiny_supernet("seed_cells")
    start = copy.deepcopy(supernet)
    cfg = {"epochs": 1, "arch_lr": 0.01, "arch_weight_decay": 0.1, "weight_lr": 0.05, "weight_decay": 0.01,
           "momentum": 0.9, "grad_clip": 1e9}
    strategy = DartsStrategy(**cfg)
    strategy.build_supernet = lambda space: supernet
    (xw, yw), (xa, ya) = _batch(1), _batch(2)
    strategy.search(tiny_space("seed_cells"), TensorLoader(xw, yw, 6), TensorLoader(xa, ya, 6))

    names, weights, alphas = split_params(start)
    g_a = torch.autograd.grad(F.cross_entropy(start(xa), ya), alphas)
    with torch.no_grad():
        for a, g in zip(alphas, g_a):
            g = g + cfg["arch_weight_decay"] * a
            a -= cfg["arch_lr"] * g / (g.abs() + 1e-8)  # Adam's first step: m_hat = g, v_hat = g^2
    g_w = torch.autograd.grad(F.cross_entropy(start(xw), yw), weights, allow_unused=True)
    with torch.no_grad():
        for w, g in zip(weights, g_w):
            if g is not None:
                w -= cfg["weight_lr"] * (g + cfg["weight_decay"] * w)  # SGD's first step: the buffer is the gradient
    got = dict(supernet.named_parameters())
    for n, p in start.named_parameters():
        assert torch.allclose(got[n], p, rtol=1e-6, atol=1e-9), n
    a_opt = torch.optim.Adam  # the paper's optimisers, with the configured settings
    state = strategy.new_state(strategy.build_supernet(None))
    assert isinstance(state.a_opt, a_opt) and state.a_opt.defaults["betas"] == (0.5, 0.999)
    assert state.a_opt.defaults["lr"] == 0.01 and state.a_opt.defaults["weight_decay"] == 0.1
    assert isinstance(state.w_opt, torch.optim.SGD) and state.w_opt.defaults["momentum"] == 0.9


def test_second_order_leaves_weights_and_batchnorm_stats_untouched():
    supernet = _tiny_supernet()
    names, weights, alphas = split_params(supernet)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    unrolled_arch_gradient(supernet, F.cross_entropy, names, weights, alphas, _batch(1), _batch(2), xi=0.1)
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, before[k]), k


def _set_edge(supernet, label: str, weights_by_op: dict[str, float]) -> None:
    """Set the alpha of an edge so that its softmax equals the given (normalised) weights."""
    for m in supernet.modules():
        if isinstance(m, MixedOp) and m.label == label:
            probs = torch.tensor([weights_by_op.get(n, 1e-3) for n in m.names])
            probs = probs / probs.sum()
            with torch.no_grad():
                m.alpha.copy_(probs.log())
            return
    raise KeyError(label)


def test_derivation_follows_the_paper():
    """Per node keep the 2 incoming edges with the strongest non-none operation; each kept edge takes
    that operation. A dominant 'none' must neither win an edge nor make the edge strong."""
    space = create_space("darts_cell", in_channels=1, image_size=8, num_classes=3, width=4, num_cells=1, num_nodes=2)
    supernet = DartsStrategy(epochs=1).build_supernet(space)
    # num_cells=1 -> a single normal cell
    _set_edge(supernet, "normal/op_0_0", {"sep_conv_3x3": 0.5, "none": 0.4})
    _set_edge(supernet, "normal/op_0_1", {"max_pool_3x3": 0.3, "skip_connect": 0.2})
    # node 1: edge 0 is dominated by 'none' (0.9) but its best real op is weak (0.05)
    _set_edge(supernet, "normal/op_1_0", {"none": 0.9, "dil_conv_3x3": 0.05})
    _set_edge(supernet, "normal/op_1_1", {"avg_pool_3x3": 0.35, "sep_conv_5x5": 0.3})
    _set_edge(supernet, "normal/op_1_2", {"dil_conv_5x5": 0.6})
    arch = derive_architecture(supernet)
    assert arch["normal/input_0"] == [0, 1]
    assert arch["normal/op_0_0"] == "sep_conv_3x3"
    assert arch["normal/op_0_1"] == "max_pool_3x3"
    assert arch["normal/input_1"] == [1, 2]  # edges 1 (0.35) and 2 (0.6) beat edge 0 (0.05 without none)
    assert arch["normal/op_1_0"] == "dil_conv_3x3"  # never 'none'
    assert arch["normal/op_1_1"] == "avg_pool_3x3"
    assert arch["normal/op_1_2"] == "dil_conv_5x5"
    assert all(v != "none" for v in arch.values())
    # The derived architecture is a valid point of the space.
    space.freeze(arch)


def test_edge_nodes_sum_their_inputs_and_generic_inputs_are_weighted():
    space = create_space("darts_cell", in_channels=1, image_size=8, num_classes=3, width=4, num_cells=1, num_nodes=2)
    supernet = DartsStrategy(epochs=1).build_supernet(space)
    node_inputs = [m for m in supernet.modules() if isinstance(m, MixedInput)]
    assert node_inputs and all(m.alpha is None and m.edge_labels for m in node_inputs)
    xs = [torch.randn(2, 3) for _ in range(node_inputs[-1].n_candidates)]
    assert torch.allclose(node_inputs[-1](xs), sum(xs))

    generic = MixedInput("x", 3, 1, "sum", torch.nn.Parameter(torch.tensor([0.0, 0.0, 100.0])), None)
    xs = [torch.full((2,), float(i)) for i in range(3)]
    assert torch.allclose(generic(xs), xs[2], atol=1e-4)


def test_shared_labels_share_one_parameter():
    space = create_space("darts_cell", in_channels=1, image_size=8, num_classes=3, width=4, num_cells=4)
    supernet = DartsStrategy(epochs=1).build_supernet(space)
    ops = [m for m in supernet.modules() if isinstance(m, MixedOp) and m.label == "normal/op_0_0"]
    assert len(ops) == 2  # two normal cells
    assert ops[0].alpha is ops[1].alpha
    assert len(arch_parameters(supernet)) == 2 * (2 + 3 + 4 + 5)  # 14 edges per cell type


def _loaders(tiny_images, seed=0):
    x, y = tiny_images
    return (TensorLoader(x[:24], y[:24], 8, shuffle=True, seed=seed),
            TensorLoader(x[24:], y[24:], 8, shuffle=True, seed=seed + 1),
            TensorLoader(x, y, 16))


@pytest.mark.parametrize("order", [1, 2])
def test_search_is_deterministic_under_a_seed_and_keeps_history(tiny_images, order):
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        space = tiny_space("seed_cells")
        strategy = create_strategy("darts", epochs=3, order=order, arch_lr=0.05)
        outcome = strategy.search(space, *_loaders(tiny_images))
        runs.append(outcome)
    a, b = runs
    assert a.arch == b.arch
    assert json.dumps([h["alphas"] for h in a.history]) == json.dumps([h["alphas"] for h in b.history])
    assert len(a.history) == 3 and [h["epoch"] for h in a.history] == [0, 1, 2]
    # alpha moved away from its initialisation across epochs
    first, last = a.history[0]["alphas"]["cell0"]["alpha"], a.history[-1]["alphas"]["cell0"]["alpha"]
    assert first != last


def test_warmup_epochs_keep_alpha_fixed(tiny_images):
    torch.manual_seed(0)
    strategy = create_strategy("darts", epochs=2, warmup_epochs=1)
    outcome = strategy.search(tiny_space("seed_cells"), *_loaders(tiny_images))
    supernet_alpha_epoch0 = outcome.history[0]["alphas"]["cell0"]["alpha"]
    torch.manual_seed(0)
    init = DartsStrategy(epochs=1).build_supernet(tiny_space("seed_cells"))
    assert supernet_alpha_epoch0 == pytest.approx(arch_parameters(init)["cell0"].tolist())
    assert outcome.history[1]["alphas"]["cell0"]["alpha"] != supernet_alpha_epoch0


@pytest.mark.parametrize("bad", [{"order": 3}, {"epochs": 0}, {"arch_lr": 0}, {"momentum": 1.0},
                                 {"weight_lr_min": 1.0}, {"warmup_epochs": 5, "epochs": 2}, {"epochs": 2.5}])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises((ValueError, TypeError)):
        create_strategy("darts", **bad)


def test_unknown_setting_names_the_known_ones():
    with pytest.raises(TypeError, match="arch_lr"):
        create_strategy("darts", arch_lrr=0.1)


def test_nan_loss_stops_within_one_step(tiny_images):
    x, y = tiny_images
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    loader = TensorLoader(x, y, 8)
    with pytest.raises(FloatingPointError, match="epoch 0 step 0"):
        create_strategy("darts", epochs=1).search(tiny_space("seed_cells"), loader, loader)
