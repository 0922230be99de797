"""DARTS (Liu, Simonyan, Yang, ICLR 2019) as an NNI strategy, first and second order.

The supernet is built through NNI-style mutation hooks (see :mod:`nni_visplugin.nas.relax`). The
bilevel problem (:class:`~nni_visplugin.nas.strategies.base.BilevelStrategy`) alternates, per step:

1. the architecture step on a batch of the architecture half of the training data, by
   ``grad_alpha L_a(w, alpha)`` (first order) or by the unrolled approximation of section 2.3
   (second order) with the finite-difference Hessian-vector product of equation (8);
2. the weight step on a batch of the weight half, by SGD with momentum under a cosine schedule.

The validation split only measures progress; the test split never reaches this module.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from nni_visplugin.config.fields import setting
from nni_visplugin.nas.derive import derive_architecture, select_by_perturbation
from nni_visplugin.nas.fastconv import enable_fast_depthwise
from nni_visplugin.nas.health import op_alphas
from nni_visplugin.nas.relax import (enable_aux_reduce, enable_checkpointing, enable_edge_normalization,
                                     enable_partial_channels, mixed_input_hook, mixed_op_hook, set_aux_skip)
from nni_visplugin.nas.strategies.base import BilevelState, BilevelStrategy, OneShotConfig, SearchOutcome
from nni_visplugin.nas.training import check_finite, to_layout
from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.utils.registry import register_strategy

__all__ = ["DartsConfig", "DartsStrategy", "unrolled_arch_gradient"]

_logger = logging.getLogger(__name__)

SELECTIONS = ("alpha", "perturbation")


@dataclass(frozen=True)
class DartsConfig(OneShotConfig):
    """DARTS settings. Defaults are the paper's CIFAR-10 settings (appendix A.1.1)."""

    order: int = setting(1, "architecture gradient: 1 first order, 2 the unrolled one (section 2.3)",
                         choices=(1, 2))
    hvp_eps: float = setting(0.01, "second order: finite-difference radius, divided by ||grad_w'||, as in the paper",
                             above=0)
    # PC-DARTS (Xu et al., ICLR 2020): candidates run on 1/partial_channels of each edge's channels;
    # edge_norm adds a weight per incoming edge of every node (their paper uses K=4 with both).
    partial_channels: int = setting(1, "PC-DARTS: 1/K of each edge's channels run its candidates (1: off)",
                                    at_least=1)
    edge_norm: bool = setting(False, "PC-DARTS edge normalisation: a weight per incoming edge of every node")
    # DARTS- (Chu et al., ICLR 2021): an auxiliary skip connection of weight aux_skip on every edge
    # (beta * x, or beta * FactorizedReduce(x) on a stride-2 edge), decayed linearly to 0 over the
    # epochs (the paper starts at 1).
    aux_skip: float = setting(0.0, "DARTS-: initial weight of the auxiliary skip connection (0: off)", at_least=0)
    # beta-DARTS (Ye et al., CVPR 2022): lambda_t times the mean over edges of logsumexp(alpha) is
    # added to the architecture loss, lambda_t = beta_reg * epoch / epochs growing linearly from 0.
    beta_reg: float = setting(0.0, "beta-DARTS: final weight of the logsumexp(alpha) regulariser (0: off)",
                              at_least=0)
    # Memory-lean search: each edge recomputes its candidates in the backward pass instead of
    # keeping their activations (same values and gradients; more compute). First order only: the
    # second-order step evaluates the supernet at virtual weights, which a recomputation would miss.
    checkpoint_edges: bool = setting(False, "recompute each edge's candidates in the backward pass (order 1)")
    # With checkpoint_edges: the share of the mixed edges that recompute, the first ones of the
    # network (at the highest resolution, where most of the activations are); 1 = all of them.
    checkpoint_share: float = setting(1.0, "share of the edges that recompute, the first ones", above=0, at_most=1)
    # How the nodes' incoming edges are chosen at the end: "alpha", DARTS's rule (the edges whose
    # strongest operation weighs most), or "perturbation", DARTS-PT's topology selection (Wang et
    # al., ICLR 2021; without its fine-tuning): the edges whose removal costs the supernet most
    # accuracy on perturbation_images images of the architecture split.
    topology: str = setting("alpha", "how the nodes' incoming edges are chosen at the end", choices=SELECTIONS)
    # How each kept edge's operation is chosen: "alpha" (DARTS: the largest weight other than
    # none) or "perturbation" (DARTS-PT's operation selection, without its fine-tuning): the
    # operation whose removal costs the supernet most accuracy on those images.
    operations: str = setting("alpha", "how each kept edge's operation is chosen at the end", choices=SELECTIONS)
    perturbation_images: int = setting(1000, "images of the architecture split the perturbation selection measures",
                                       at_least=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.checkpoint_edges and self.order == 2:
            raise ConfigError("checkpoint_edges works with order=1 only (the second-order step evaluates the "
                              "supernet at virtual weights, which a recomputation in the backward pass would not see)")


def unrolled_arch_gradient(supernet: nn.Module, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                           weight_names: Sequence[str], weights: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor],
                           batch_w: tuple[torch.Tensor, torch.Tensor], batch_a: tuple[torch.Tensor, torch.Tensor],
                           xi: float, momentum: float = 0.0, weight_decay: float = 0.0,
                           momentum_buffers: Sequence[torch.Tensor | None] | None = None,
                           fd_scale: float = 0.01) -> list[torch.Tensor]:
    """Second-order DARTS architecture gradient (paper, equations 6-8).

    ``w' = w - xi * (momentum * buf + grad_w L_w(w, alpha) + weight_decay * w)`` is the virtual SGD
    step; the gradient is ``grad_alpha L_a(w', alpha) - xi * (grad_alpha L_w(w+, alpha) -
    grad_alpha L_w(w-, alpha)) / (2 eps)`` with ``w+- = w +- eps * grad_w' L_a(w', alpha)`` and
    ``eps = fd_scale / ||grad_w' L_a(w', alpha)||``.

    Batch-norm running statistics are not touched: the virtual steps use copies of the buffers.
    """
    buffers = {n: b.clone() for n, b in supernet.named_buffers()}

    def loss_at(params: Sequence[torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        out = functional_call(supernet, {**dict(zip(weight_names, params)), **buffers}, (x,))
        return criterion(out, y)

    grads_w = torch.autograd.grad(loss_at(weights, batch_w), weights)
    bufs = momentum_buffers if momentum_buffers is not None else [None] * len(weights)
    with torch.no_grad():
        w_virtual = []
        for w, g, buf in zip(weights, grads_w, bufs):
            step = g + weight_decay * w
            if buf is not None:
                step = step + momentum * buf
            w_virtual.append((w - xi * step).requires_grad_())

    loss_a = loss_at(w_virtual, batch_a)
    grads = torch.autograd.grad(loss_a, list(alphas) + w_virtual, allow_unused=True)
    d_alpha = [g if g is not None else torch.zeros_like(a) for g, a in zip(grads[: len(alphas)], alphas)]
    d_w = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads[len(alphas):], w_virtual)]

    norm = torch.sqrt(sum((g * g).sum() for g in d_w))
    if norm.item() == 0.0:
        return d_alpha
    eps = fd_scale / norm
    with torch.no_grad():
        w_plus = [w + eps * d for w, d in zip(weights, d_w)]
        w_minus = [w - eps * d for w, d in zip(weights, d_w)]
    g_plus = torch.autograd.grad(loss_at(w_plus, batch_w), list(alphas), allow_unused=True)
    g_minus = torch.autograd.grad(loss_at(w_minus, batch_w), list(alphas), allow_unused=True)
    out = []
    for da, gp, gm in zip(d_alpha, g_plus, g_minus):
        gp = gp if gp is not None else torch.zeros_like(da)
        gm = gm if gm is not None else torch.zeros_like(da)
        out.append(da - xi * (gp - gm) / (2 * eps))
    return out


@register_strategy("darts")
class DartsStrategy(BilevelStrategy):
    """DARTS as an NNI ``Strategy``; keyword arguments are the fields of :class:`DartsConfig`."""

    config_class = DartsConfig
    name = "darts"

    def choice_hooks(self):
        return [mixed_op_hook, mixed_input_hook]

    def build_supernet(self, model_space: nn.Module) -> nn.Module:
        """A relaxed copy of ``model_space`` with the configured switches of the relaxation; the space
        itself is left untouched for ``freeze``."""
        cfg = self.config
        supernet = self.mutate_model(copy.deepcopy(model_space))
        if cfg.partial_channels > 1:
            enable_partial_channels(supernet, cfg.partial_channels)
        if cfg.edge_norm:
            enable_edge_normalization(supernet)
        if cfg.checkpoint_edges:
            enable_checkpointing(supernet, cfg.checkpoint_share)
        if cfg.aux_skip:
            enable_aux_reduce(supernet)
        enable_fast_depthwise(supernet)  # last: partial channels rebuild the candidates' convolutions
        return supernet

    def on_epoch_start(self, state: BilevelState) -> None:
        cfg = self.config
        if cfg.aux_skip:
            set_aux_skip(state.supernet, cfg.aux_skip * (1 - state.epoch / cfg.epochs))

    def derive(self, supernet: nn.Module) -> dict[str, Any]:
        return derive_architecture(supernet)

    def arch_step(self, state: BilevelState, batch_w: tuple[torch.Tensor, torch.Tensor],
                  batch_a: tuple[torch.Tensor, torch.Tensor], where: str) -> None:
        cfg = self.config
        if cfg.order == 1:
            loss = state.criterion(state.supernet(batch_a[0]), batch_a[1])
            check_finite(loss, f"architecture step, {where}")
            # Gradients for alpha only: the first-order step never needs weight gradients.
            grads = torch.autograd.grad(loss, state.alphas)
        else:
            bufs = [state.w_opt.state.get(p, {}).get("momentum_buffer") for p in state.weights]
            grads = unrolled_arch_gradient(state.supernet, state.criterion, state.weight_names, state.weights,
                                           state.alphas, batch_w, batch_a, xi=state.lr, momentum=cfg.momentum,
                                           weight_decay=cfg.weight_decay, momentum_buffers=bufs,
                                           fd_scale=cfg.hvp_eps)
            for g in grads:
                check_finite(g, f"second-order architecture gradient, {where}")
        if cfg.beta_reg:
            grads = [g + r for g, r in zip(grads, self.beta_reg_grad(state.supernet, state.alphas, state.epoch))]
        for a, g in zip(state.alphas, grads):
            a.grad = g
        state.a_opt.step()
        state.a_opt.zero_grad(set_to_none=True)

    def beta_reg_grad(self, supernet: nn.Module, alphas: Sequence[nn.Parameter], epoch: int) -> list[torch.Tensor]:
        """Gradient of ``lambda_t * mean_edges logsumexp(alpha_edge)`` (beta-DARTS), ``lambda_t =
        beta_reg * epoch / epochs``: 0 in the first epoch, as in the reference, then growing linearly.
        Its gradient is ``lambda_t / |E| * softmax(alpha)``:
        it pushes every operation's alpha down in proportion to its weight, against the runaway
        growth of one (skip) operation."""
        cfg = self.config
        lam = cfg.beta_reg * epoch / cfg.epochs
        ops = op_alphas(supernet)
        reg = lam * torch.stack([torch.logsumexp(a, -1) for a in ops]).mean()
        grads = torch.autograd.grad(reg, list(alphas), allow_unused=True)
        return [g if g is not None else torch.zeros_like(a) for g, a in zip(grads, alphas)]

    def finalize(self, state: BilevelState, train_a: Iterable, device: torch.device | str) -> SearchOutcome:
        outcome = super().finalize(state, train_a, device)
        if state.history and "perturbation" in (self.config.topology, self.config.operations):
            outcome.arch = self._perturbation_selection(state.supernet, outcome.arch, train_a, device,
                                                        state.history[-1])
        return outcome

    def _perturbation_selection(self, supernet: nn.Module, arch: dict[str, Any], train_a: Iterable,
                                device: torch.device | str, record: dict[str, Any]) -> dict[str, Any]:
        """The edges' operations, then the nodes' inputs, chosen by perturbation (as configured) on
        the first images of the architecture split."""
        start = time.perf_counter()
        batches, n = [], 0
        for x, y in train_a:
            batches.append((to_layout(x.to(device), device), y.to(device)))
            n += y.numel()
            if n >= self.config.perturbation_images:
                break
        arch, measured = select_by_perturbation(supernet, batches, arch,
                                                operations=self.config.operations == "perturbation",
                                                topology=self.config.topology == "perturbation")
        measured["images"] = n
        measured["seconds"] = time.perf_counter() - start
        record["arch"] = arch
        record["perturbation"] = measured
        _logger.info("%s: %s chosen by perturbation on %d images (%.1f s)", self.name,
                     " and ".join(w for w, k in (("nodes' inputs", "nodes"), ("operations", "edges")) if k in measured),
                     n, measured["seconds"])
        return arch
