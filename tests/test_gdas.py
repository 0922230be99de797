"""GDAS against its definition: Gumbel-max draws from softmax(alpha), one operation runs per edge, the
straight-through gradient of the soft sample, the temperature schedule, determinism."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from nni_visplugin import create_strategy
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.strategies.gdas import GdasStrategy, GumbelOp, GumbelSampler
from nni_visplugin.utils.errors import ConfigError

from helpers.spaces import tiny_space


def test_draws_follow_softmax_of_alpha():
    """The Gumbel-max trick samples candidate i with probability exp(a_i) / sum exp(a), at any tau."""
    alpha = torch.tensor([1.0, 0.0, -1.0, 0.5])
    expected = [math.exp(a) / sum(math.exp(b) for b in alpha.tolist()) for a in alpha.tolist()]
    torch.manual_seed(0)
    sampler = GumbelSampler()
    sampler.tau = 0.3
    n = 20000
    counts = [0] * 4
    for _ in range(n):
        sampler.new_step()
        counts[sampler.draw("e", alpha)[0]] += 1
    for c, p in zip(counts, expected):
        # Within 5 binomial standard deviations.
        assert abs(c / n - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_one_draw_per_label_and_step():
    sampler = GumbelSampler()
    alpha = torch.zeros(5)
    torch.manual_seed(1)
    first = sampler.draw("e", alpha)
    assert sampler.draw("e", alpha) is first  # a second module of the label reuses the draw
    draws = set()
    for _ in range(50):
        sampler.new_step()
        draws.add(sampler.draw("e", alpha)[0])
    assert len(draws) > 1  # a new step draws again


class _Scale(nn.Module):
    def __init__(self, s: float):
        super().__init__()
        self.s = s
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.s


def test_only_the_drawn_operation_runs_and_the_gradient_is_the_straight_through_one():
    """Gradient of the loss in alpha, by finite differences of
    F(a) = L((1 + h_k(a) - h_k(a0)) * o_k(x) + sum_{i != k} (h_i(a) - h_i(a0))),
    h = softmax((log_softmax(a) + g) / tau) with the same Gumbel noise g: the edge of GDAS's
    implementation, one_hot(k) in value, the soft sample's gradient."""
    torch.manual_seed(3)
    cands = [_Scale(s) for s in (0.5, -1.0, 2.0)]
    alpha = nn.Parameter(torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64))
    sampler = GumbelSampler()
    sampler.tau = 0.7
    op = GumbelOp("e", ["a", "b", "c"], cands, alpha, sampler)
    x = torch.randn(4, 3, dtype=torch.float64)
    target = torch.randn(4, 3, dtype=torch.float64)
    state = torch.get_rng_state()
    out = op(x)
    k, _ = sampler.draw("e", alpha)
    assert [c.calls for c in cands] == [int(i == k) for i in range(3)]
    assert torch.equal(out, x * cands[k].s)  # gate value exactly 1
    loss = ((out - target) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, alpha)

    torch.set_rng_state(state)  # the same noise, drawn as the sampler draws it
    gumbel = -torch.empty_like(alpha).exponential_().clamp_min(1e-20).log()

    def h(a: torch.Tensor) -> list[float]:
        z = (a - torch.logsumexp(a, 0) + gumbel) / sampler.tau
        return torch.exp(z - torch.logsumexp(z, 0)).tolist()

    def f(a: torch.Tensor) -> float:
        now, then = h(a), h(alpha.detach())
        others = sum(now[i] - then[i] for i in range(3) if i != k)
        out = (1.0 + now[k] - then[k]) * x * cands[k].s + others
        return float(((out - target) ** 2).sum())

    eps = 1e-6
    numeric = []
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = eps
        numeric.append((f(alpha.detach() + e) - f(alpha.detach() - e)) / (2 * eps))
    assert grad.tolist() == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_evaluation_runs_the_strongest_operation_other_than_a_zero_one():
    from nni_visplugin.spaces.ops import Zero

    cands = [_Scale(1.0), Zero(), _Scale(3.0)]
    alpha = nn.Parameter(torch.tensor([0.1, 5.0, 0.3]))
    op = GumbelOp("e", ["a", "none", "c"], cands, alpha, GumbelSampler()).eval()
    x = torch.ones(2, 2)
    assert torch.equal(op(x), 3 * x) and cands[0].calls == 0


def test_temperature_falls_linearly_from_tau_max_to_tau_min(tiny_images):
    x, y = tiny_images
    torch.manual_seed(0)
    strategy = GdasStrategy(epochs=4, tau_max=8.0, tau_min=2.0)
    outcome = strategy.search(tiny_space("seed_cells"), TensorLoader(x[:24], y[:24], 12),
                              TensorLoader(x[24:], y[24:], 12))
    assert [r["gumbel_tau"] for r in outcome.history] == pytest.approx([8.0, 6.0, 4.0, 2.0])
    with pytest.raises(ConfigError, match="tau_min"):
        GdasStrategy(tau_max=0.5, tau_min=1.0)


def test_alphas_move_and_a_fixed_seed_repeats_the_search(tiny_images):
    x, y = tiny_images

    def run():
        torch.manual_seed(5)
        return create_strategy("gdas", epochs=2, arch_lr=0.05).search(
            tiny_space("nb201_cell"), TensorLoader(x[:24], y[:24], 12, shuffle=True, seed=0),
            TensorLoader(x[24:], y[24:], 12, shuffle=True, seed=1))

    a, b = run(), run()
    assert a.history[-1]["alphas"] == b.history[-1]["alphas"] and a.arch == b.arch
    moved = [max(abs(v) for v in entry["alpha"]) for entry in a.history[-1]["alphas"].values()]
    assert max(moved) > 1e-2  # far beyond the 1e-3 initialisation
