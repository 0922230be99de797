"""GDAS (Dong and Yang, "Searching for A Robust Neural Architecture in Four GPU Hours", CVPR 2019) as
an NNI strategy: a sampling relaxation that runs one operation per edge.

Each ``LayerChoice`` becomes a :class:`GumbelOp`. Every step (weights and architecture alike) draws
one operation per label from ``p = softmax(alpha)`` with the Gumbel-max trick (section 3.2):
``k = argmax_i (log p_i + g_i)``, ``g_i ~ Gumbel(0, 1)``. The gates are ``h = one_hot(k)`` in the
forward pass and take their gradient from the soft sample ``softmax((log p + g) / tau)`` in the
backward pass (the straight-through estimator of equations 5-7). Only operation ``k`` runs: the edge
computes ``h_k * o_k(x) + sum_{i != k} h_i``, as the authors' implementation does, whose value is
``o_k(x)`` and whose gradient reaches every alpha, through ``<dL/dout, o_k(x)>`` for the drawn gate
and through the sum of ``dL/dout`` for the others (the operations that were not drawn are not run).
The temperature ``tau`` falls linearly from ``tau_max`` to ``tau_min`` over the epochs (10 to 0.1
in NAS-Bench-201's GDAS runs). Choices sharing a label share one draw per step, so every cell of a
step runs the same architecture.

A step therefore costs about one operation per edge instead of all of them (DARTS's mixed
operation), which is what makes GDAS fast on a CPU. ``InputChoice`` nodes of a DARTS cell sum their
incoming edges as in DARTS; the derivation is DARTS's rule (:func:`~nni_visplugin.nas.derive.
derive_architecture`). In evaluation mode every edge runs its strongest operation (other than a
``none`` flagged ``is_zero``), so the supernet's validation accuracy is that of the derived
operations with the shared weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.nas.nn.pytorch import LayerChoice

from nni_visplugin.config.fields import setting
from nni_visplugin.nas.derive import derive_architecture
from nni_visplugin.nas.relax import MixedOp, mixed_input_hook
from nni_visplugin.nas.strategies.base import BilevelState, BilevelStrategy, OneShotConfig
from nni_visplugin.nas.training import check_finite
from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.utils.registry import register_strategy

__all__ = ["GdasConfig", "GdasStrategy", "GumbelOp", "GumbelSampler", "gumbel_tau"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GdasConfig(OneShotConfig):
    """GDAS settings: the optimisers of every bilevel search and the Gumbel temperature's schedule."""

    tau_max: float = setting(10.0, "Gumbel-softmax temperature of the first epoch", above=0)
    tau_min: float = setting(0.1, "Gumbel-softmax temperature of the last epoch", above=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau_min > self.tau_max:
            raise ConfigError(f"tau_min ({self.tau_min}) exceeds tau_max ({self.tau_max})")


def gumbel_tau(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """The temperature of ``epoch`` (0-based): linear from ``tau_max`` at the first epoch to ``tau_min``
    at the last."""
    if epochs <= 1:
        return tau_max
    return tau_max - (tau_max - tau_min) * epoch / (epochs - 1)


class GumbelSampler:
    """One draw per label and step, shared by every :class:`GumbelOp` of that label."""

    def __init__(self) -> None:
        self.tau = 1.0
        self.draws: dict[str, tuple[int, torch.Tensor]] = {}

    def new_step(self) -> None:
        """Forget the draws: the next forward pass draws again."""
        self.draws = {}

    def draw(self, label: str, alpha: torch.Tensor) -> tuple[int, torch.Tensor]:
        """``(k, h)``: the drawn candidate and the gates, ``one_hot(k)`` in value with the gradient of
        the soft sample."""
        if label not in self.draws:
            # Gumbel(0, 1) = -log(E), E ~ Exp(1); E is kept off 0, whose log is -inf.
            gumbel = -torch.empty_like(alpha).exponential_().clamp_min(1e-20).log()
            scores = F.log_softmax(alpha, -1) + gumbel
            k = int(scores.argmax())
            soft = F.softmax(scores / self.tau, -1)
            self.draws[label] = (k, F.one_hot(torch.tensor(k), len(soft)).to(soft) + soft - soft.detach())
        return self.draws[label]


class GumbelOp(MixedOp):
    """A ``LayerChoice`` under GDAS: the drawn candidate alone in training, the strongest in evaluation.
    A :class:`~nni_visplugin.nas.relax.MixedOp` otherwise (its ``weights`` are ``softmax(alpha)``),
    so the derivation and the health metrics read it as they read DARTS's edges."""

    def __init__(self, label: str, names: list, candidates: list[nn.Module], alpha: nn.Parameter,
                 sampler: GumbelSampler):
        super().__init__(label, names, candidates, alpha)
        self._sampler = [sampler]  # a list: keeps it out of the module tree

    def strongest(self) -> int:
        w = self.alpha.detach()
        return max((i for i in range(len(self.names)) if not self.zero[i]), key=lambda i: float(w[i]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.candidates[self.strongest()](x)
        k, h = self._sampler[0].draw(self.label, self.alpha)
        return self.candidates[k](x) * h[k] + (h.sum() - h[k])  # the second term: 0 in value


@register_strategy("gdas")
class GdasStrategy(BilevelStrategy):
    """GDAS as an NNI ``Strategy``; keyword arguments are the fields of :class:`GdasConfig`."""

    config_class = GdasConfig
    name = "gdas"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.sampler = GumbelSampler()

    def choice_hooks(self):
        return [self._op_hook, mixed_input_hook]

    def _op_hook(self, module, name, memo, kwargs):
        if not isinstance(module, LayerChoice):
            return None
        names = list(module.names)
        # Near-uniform with ties broken, as DARTS starts (GDAS's code does the same).
        alpha = memo.setdefault(module.label, nn.Parameter(1e-3 * torch.randn(len(names))))
        return GumbelOp(module.label, names, [module[n] for n in names], alpha, self.sampler)

    def on_epoch_start(self, state: BilevelState) -> None:
        cfg = self.config
        self.sampler.tau = gumbel_tau(state.epoch, cfg.epochs, cfg.tau_max, cfg.tau_min)

    def arch_step(self, state: BilevelState, batch_w: tuple[torch.Tensor, torch.Tensor],
                  batch_a: tuple[torch.Tensor, torch.Tensor], where: str) -> None:
        self.sampler.new_step()
        loss = state.criterion(state.supernet(batch_a[0]), batch_a[1])
        check_finite(loss, f"architecture step, {where}")
        grads = torch.autograd.grad(loss, state.alphas, allow_unused=True)
        for a, g in zip(state.alphas, grads):
            a.grad = g  # None where the drawn operation was a zero one: that alpha is left as it is
        state.a_opt.step()
        state.a_opt.zero_grad(set_to_none=True)

    def weight_loss(self, state: BilevelState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.sampler.new_step()
        return state.criterion(state.supernet(x), y)

    def epoch_extras(self, supernet: nn.Module, arch: dict[str, Any]) -> dict[str, Any]:
        return {"gumbel_tau": self.sampler.tau}

    def derive(self, supernet: nn.Module) -> dict[str, Any]:
        return derive_architecture(supernet)
