"""DARTS (Liu, Simonyan, Yang, ICLR 2019) as an NNI strategy, first and second order.

The supernet is built through NNI's own mutation hooks (see :mod:`nni_visplugin.nas.relax`). The
bilevel problem alternates, per step:

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy, no_default_hook
from nni.nas.space import RawFormatModelSpace
from torch.func import functional_call

from nni_visplugin.nas.derive import derive_architecture, select_inputs_by_perturbation, select_ops_by_perturbation
from nni_visplugin.nas.fastconv import enable_fast_depthwise
from nni_visplugin.nas.health import alpha_entropy, count_skips, op_alphas
from nni_visplugin.nas.relax import (alpha_snapshot, enable_checkpointing, enable_edge_normalization,
                                     enable_partial_channels, mixed_input_hook, mixed_op_hook, reject_unsupported_hook,
                                     set_aux_skip)
from nni_visplugin.nas.strategies.base import OneShotConfig, SearchOutcome, split_loader_for_bilevel, split_params
from nni_visplugin.nas.training import check_finite, evaluate, memory_format, to_layout
from nni_visplugin.utils.checkpoints import CheckpointError, SearchCheckpoints
from nni_visplugin.utils.registry import register_strategy
from nni_visplugin.utils.seeding import rng_state, set_rng_state

__all__ = ["DartsConfig", "DartsStrategy", "unrolled_arch_gradient"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DartsConfig(OneShotConfig):
    """DARTS settings. Defaults are the paper's CIFAR-10 settings (appendix A.1.1)."""

    order: int = 1
    hvp_eps: float = 0.01  # second order: finite-difference radius, divided by ||grad_w'||, as in the paper
    # PC-DARTS (Xu et al., ICLR 2020): candidates run on 1/partial_channels of each edge's channels;
    # edge_norm adds a weight per incoming edge of every node (their paper uses K=4 with both).
    partial_channels: int = 1
    edge_norm: bool = False
    # DARTS- (Chu et al., ICLR 2021): an auxiliary skip connection of weight aux_skip on every
    # shape-preserving edge, decayed linearly to 0 over the epochs (the paper starts at 1).
    aux_skip: float = 0.0
    # beta-DARTS (Ye et al., CVPR 2022): beta_reg * (epoch+1)/epochs times the mean over edges of
    # logsumexp(alpha) is added to the architecture loss.
    beta_reg: float = 0.0
    # Memory-lean search: each edge recomputes its candidates in the backward pass instead of
    # keeping their activations (same values and gradients; more compute). First order only: the
    # second-order step evaluates the supernet at virtual weights, which a recomputation would miss.
    checkpoint_edges: bool = False
    # With checkpoint_edges: the share of the mixed edges that recompute, the first ones of the
    # network (at the highest resolution, where most of the activations are); 1 = all of them.
    checkpoint_share: float = 1.0
    # How the nodes' incoming edges are chosen at the end: "alpha", DARTS's rule (the edges whose
    # strongest operation weighs most), or "perturbation", DARTS-PT's topology selection (Wang et
    # al., ICLR 2021; without its fine-tuning): the edges whose removal costs the supernet most
    # accuracy on perturbation_images images of the architecture split.
    topology: str = "alpha"
    # How each kept edge's operation is chosen: "alpha" (DARTS: the largest weight other than
    # none) or "perturbation" (DARTS-PT's operation selection, without its fine-tuning): the
    # operation whose removal costs the supernet most accuracy on those images.
    operations: str = "alpha"
    perturbation_images: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.checkpoint_share <= 1:
            raise ValueError(f"checkpoint_share must be in (0, 1], got {self.checkpoint_share}")
        if self.topology not in ("alpha", "perturbation"):
            raise ValueError(f"topology must be alpha or perturbation, got {self.topology!r}")
        if self.operations not in ("alpha", "perturbation"):
            raise ValueError(f"operations must be alpha or perturbation, got {self.operations!r}")
        if self.perturbation_images < 1:
            raise ValueError(f"perturbation_images must be >= 1, got {self.perturbation_images}")
        if self.checkpoint_edges and self.order == 2:
            raise ValueError("checkpoint_edges works with order=1 only (the second-order step evaluates the "
                             "supernet at virtual weights, which a recomputation in the backward pass would not see)")
        if self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {self.order}")
        if not self.hvp_eps > 0:
            raise ValueError(f"hvp_eps must be > 0, got {self.hvp_eps}")
        if self.partial_channels < 1:
            raise ValueError(f"partial_channels must be >= 1 (1 = off), got {self.partial_channels}")
        if self.aux_skip < 0 or self.beta_reg < 0:
            raise ValueError("aux_skip and beta_reg must be >= 0 (0 = off)")


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
class DartsStrategy(OneShotStrategy):
    """DARTS as an NNI ``Strategy``.

    Use it standalone through :meth:`search`, or inside ``nni.nas.experiment.NasExperiment`` with an
    NNI Lightning evaluator (``nni.nas.evaluator.pytorch.Classification``): its training data is
    halved between the weight and the architecture steps and its validation data measures progress.

    Keyword arguments are the fields of :class:`DartsConfig`.
    """

    config_class = DartsConfig

    def __init__(self, **kwargs: Any):
        super().__init__()
        known = [f.name for f in fields(self.config_class)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise TypeError(f"strategy {type(self).__name__} got unknown setting(s) {', '.join(unknown)}; "
                            f"it takes: {', '.join(known)}")
        self.config = self.config_class(**kwargs)
        self.outcome: SearchOutcome | None = None
        self.history: list[dict[str, Any]] = []

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())

    def default_mutation_hooks(self):
        return [reject_unsupported_hook, mixed_op_hook, mixed_input_hook, no_default_hook]

    def build_supernet(self, model_space: nn.Module) -> nn.Module:
        """A relaxed copy of ``model_space``; the space itself is left untouched for ``freeze``."""
        supernet = self.mutate_model(copy.deepcopy(model_space))
        if getattr(self.config, "partial_channels", 1) > 1:
            enable_partial_channels(supernet, self.config.partial_channels)
        if getattr(self.config, "edge_norm", False):
            enable_edge_normalization(supernet)
        if getattr(self.config, "checkpoint_edges", False):
            enable_checkpointing(supernet, getattr(self.config, "checkpoint_share", 1.0))
        enable_fast_depthwise(supernet)
        return supernet

    # ----------------------------------------------------------------- the search
    def search(self, model_space: nn.Module, train_w: Iterable, train_a: Iterable, val: Iterable | None = None, *,
               device: torch.device | str = "cpu",
               on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
               checkpoint_dir: str | Path | None = None) -> SearchOutcome:
        """Run the bilevel optimisation and derive the architecture.

        ``train_w`` feeds the weight steps, ``train_a`` the architecture steps; ``val`` (optional) is
        evaluated after every epoch. ``on_epoch(epoch, record)`` receives each history record.
        With ``checkpoint_dir``, a checkpoint is written after every epoch and a search started
        again with the same directory resumes after its last complete epoch (``self.history``
        then already holds the earlier epochs).
        """
        cfg = self.config
        supernet = self.build_supernet(model_space).to(device, memory_format=memory_format(device))
        self._prepare(model_space, supernet, device)
        names, weights, alphas = split_params(supernet)
        if not alphas:
            raise ValueError("the model space has no LayerChoice or InputChoice to search")
        w_opt = torch.optim.SGD(weights, lr=cfg.weight_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        a_opt = torch.optim.Adam(alphas, lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2),
                                 weight_decay=cfg.arch_weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg.epochs, eta_min=cfg.weight_lr_min)
        criterion = nn.CrossEntropyLoss()
        history: list[dict[str, Any]] = []
        self.history = history
        checkpoints = SearchCheckpoints(checkpoint_dir) if checkpoint_dir is not None else None
        first_epoch = 0
        fingerprint = {"strategy": type(self).__name__, "config": asdict(self.config),
                       "space": type(model_space).__name__,
                       "space_kwargs": repr(sorted(getattr(model_space, "trace_kwargs", {}).items()))}
        loaders = (train_w, train_a)
        if checkpoints is not None and (found := checkpoints.load_latest()) is not None:
            path, state = found
            if state.get("fingerprint") != fingerprint:
                raise CheckpointError(f"checkpoint {path} was written by a different search "
                                      f"({state.get('fingerprint')}); use another output directory")
            supernet.load_state_dict(state["supernet"])
            w_opt.load_state_dict(state["w_opt"])
            a_opt.load_state_dict(state["a_opt"])
            sched.load_state_dict(state["sched"])
            history.extend(state["history"])
            set_rng_state(state["rng"])
            for loader, loader_state in zip(loaders, state["loaders"]):
                if loader_state is not None:
                    loader.load_state_dict(loader_state)
            first_epoch = state["epoch"] + 1
            _logger.info("resuming from %s: epochs 1-%d done", path, first_epoch)
            if self._stop_reason(history):  # it had already stopped early
                first_epoch = cfg.epochs

        for epoch in range(first_epoch, cfg.epochs):
            start = time.perf_counter()
            supernet.train()
            self._epoch = epoch
            if getattr(cfg, "aux_skip", 0.0):
                set_aux_skip(supernet, cfg.aux_skip * (1 - epoch / cfg.epochs))
            lr = w_opt.param_groups[0]["lr"]
            update_arch = epoch >= cfg.warmup_epochs
            loss_sum, n_seen, steps = 0.0, 0, 0
            for step, ((xw, yw), (xa, ya)) in enumerate(zip(train_w, train_a)):
                xw, yw, xa, ya = to_layout(xw, device), yw.to(device), to_layout(xa, device), ya.to(device)
                where = f"epoch {epoch} step {step}"
                if update_arch:
                    self._arch_step(supernet, criterion, names, weights, alphas, w_opt, a_opt,
                                    (xw, yw), (xa, ya), lr, where)
                loss = self._weight_loss(supernet, criterion, xw, yw)
                check_finite(loss, f"weight step, {where}")
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for p, g in zip(weights, grads):
                    p.grad = g  # None for operations the step did not run: SGD skips them
                nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
                w_opt.step()
                w_opt.zero_grad(set_to_none=True)
                loss_sum += loss.item() * yw.numel()
                n_seen += yw.numel()
                steps += 1
            if steps == 0:
                raise ValueError("the training loaders yielded no batch")
            sched.step()

            arch = self.derive(supernet)
            record: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / n_seen, "weight_lr": lr,
                                      "alphas": alpha_snapshot(supernet), "arch": arch}
            record["alpha_entropy"] = alpha_entropy(supernet)
            record["normal_skips"] = count_skips(supernet, arch)
            record.update(self._epoch_extras(supernet, arch))
            if val is not None:
                record["val_accuracy"] = self._evaluate(supernet, val, device)
            record["seconds"] = time.perf_counter() - start
            history.append(record)
            stop = self._stop_reason(history)
            if stop:
                record["early_stop"] = stop
            _logger.info("%s epoch %d/%d  train_loss %.4f  val_acc %s  alpha_entropy %.3f  normal-cell skips %d  "
                         "(%.1f s)", self.name, epoch + 1, cfg.epochs, record["train_loss"],
                         f"{record['val_accuracy']:.4f}" if "val_accuracy" in record else "-",
                         record["alpha_entropy"], record["normal_skips"], record["seconds"])
            if checkpoints is not None:
                checkpoints.save(epoch, {
                    "fingerprint": fingerprint, "supernet": supernet.state_dict(), "w_opt": w_opt.state_dict(),
                    "a_opt": a_opt.state_dict(), "sched": sched.state_dict(), "history": history,
                    "rng": rng_state(),
                    "loaders": [ld.state_dict() if hasattr(ld, "state_dict") else None for ld in loaders]})
            if on_epoch is not None:
                on_epoch(epoch, record)
            if stop:
                _logger.warning("%s: stopping early after epoch %d: %s", self.name, epoch + 1, stop)
                break

        arch = self.derive(supernet)
        if history and "perturbation" in (getattr(cfg, "topology", "alpha"), getattr(cfg, "operations", "alpha")):
            arch = self._perturbation_selection(supernet, arch, train_a, device, history[-1])
        self.outcome = SearchOutcome(arch=arch, history=history, supernet=supernet)
        return self.outcome

    def _perturbation_selection(self, supernet: nn.Module, arch: dict[str, Any], train_a: Iterable,
                                device: torch.device | str, record: dict[str, Any]) -> dict[str, Any]:
        """The nodes' inputs, then the kept edges' operations, chosen by perturbation (as configured)
        on the first images of the architecture split."""
        start = time.perf_counter()
        batches, n = [], 0
        for x, y in train_a:
            batches.append((to_layout(x.to(device), device), y.to(device)))
            n += y.numel()
            if n >= self.config.perturbation_images:
                break
        measured: dict[str, Any] = {"images": n}
        if self.config.topology == "perturbation":
            arch, measured["nodes"] = select_inputs_by_perturbation(supernet, batches, arch)
        if self.config.operations == "perturbation":
            arch, measured["edges"] = select_ops_by_perturbation(supernet, batches, arch)
        measured["seconds"] = time.perf_counter() - start
        record["arch"] = arch
        record["perturbation"] = measured
        _logger.info("%s: %s chosen by perturbation on %d images (%.1f s)", self.name,
                     " and ".join(w for w, k in (("nodes' inputs", "nodes"), ("operations", "edges")) if k in measured),
                     n, measured["seconds"])
        return arch

    def _stop_reason(self, history: list[dict[str, Any]]) -> str | None:
        """The early-stop rule that fires on ``history``, if any (only epochs where alpha moved count)."""
        cfg = self.config
        moving = [r for r in history if r["epoch"] >= cfg.warmup_epochs]
        if cfg.early_stop == "skips" and moving and moving[-1].get("normal_skips", 0) >= cfg.early_stop_skips:
            return f"{moving[-1]['normal_skips']} skip connections in the normal cell (rule: skips >= {cfg.early_stop_skips})"
        if cfg.early_stop == "stable" and len(moving) > cfg.early_stop_patience:
            def ranking(record):
                return {label: sorted(range(len(v["alpha"])), key=lambda i: -v["alpha"][i])
                        for label, v in record["alphas"].items()}
            last = moving[-cfg.early_stop_patience - 1:]
            if all(ranking(r) == ranking(last[0]) for r in last[1:]):
                return f"the operations' ranking unchanged for {cfg.early_stop_patience} epochs"
        return None

    # Steps a subclass (another relaxation of the same bilevel problem) replaces.
    name = "darts"

    def _prepare(self, model_space: nn.Module, supernet: nn.Module, device: torch.device | str) -> None:
        """Called once the supernet is built, before training."""

    def _weight_loss(self, supernet: nn.Module, criterion, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return criterion(supernet(x), y)

    def _evaluate(self, supernet: nn.Module, loader: Iterable, device: torch.device | str) -> float:
        return evaluate(supernet, loader, device)

    def _epoch_extras(self, supernet: nn.Module, arch: dict[str, Any]) -> dict[str, Any]:
        return {}

    def derive(self, supernet: nn.Module) -> dict[str, Any]:
        return derive_architecture(supernet)

    def _arch_step(self, supernet, criterion, names, weights, alphas, w_opt, a_opt, batch_w, batch_a, lr, where):
        cfg = self.config
        if cfg.order == 1:
            loss = criterion(supernet(batch_a[0]), batch_a[1])
            check_finite(loss, f"architecture step, {where}")
            # Gradients for alpha only: the first-order step never needs weight gradients.
            grads = torch.autograd.grad(loss, alphas)
        else:
            bufs = [w_opt.state.get(p, {}).get("momentum_buffer") for p in weights]
            grads = unrolled_arch_gradient(supernet, criterion, names, weights, alphas, batch_w, batch_a, xi=lr,
                                           momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                           momentum_buffers=bufs, fd_scale=cfg.hvp_eps)
            for g in grads:
                check_finite(g, f"second-order architecture gradient, {where}")
        if getattr(cfg, "beta_reg", 0.0):
            grads = [g + r for g, r in zip(grads, self._beta_reg_grad(supernet, alphas))]
        for a, g in zip(alphas, grads):
            a.grad = g
        a_opt.step()
        a_opt.zero_grad(set_to_none=True)

    def _beta_reg_grad(self, supernet: nn.Module, alphas: Sequence[nn.Parameter]) -> list[torch.Tensor]:
        """Gradient of ``lambda_t * mean_edges logsumexp(alpha_edge)`` (beta-DARTS), lambda growing
        linearly to ``beta_reg`` over the epochs. Its gradient is ``lambda_t / |E| * softmax(alpha)``:
        it pushes every operation's alpha down in proportion to its weight, against the runaway
        growth of one (skip) operation."""
        cfg = self.config
        lam = cfg.beta_reg * (getattr(self, "_epoch", cfg.epochs - 1) + 1) / cfg.epochs
        ops = op_alphas(supernet)
        reg = lam * torch.stack([torch.logsumexp(a, -1) for a in ops]).mean()
        grads = torch.autograd.grad(reg, list(alphas), allow_unused=True)
        return [g if g is not None else torch.zeros_like(a) for g, a in zip(grads, alphas)]

    # ----------------------------------------------------------------- NNI Strategy interface
    def _initialize(self, model_space: RawFormatModelSpace, engine) -> RawFormatModelSpace:
        if not isinstance(model_space, RawFormatModelSpace):
            raise TypeError(f"{type(self).__name__} needs the 'raw' model format, got {type(model_space).__name__}")
        return model_space

    def _run(self) -> None:
        space = self.model_space
        evaluator = space.evaluator
        train = getattr(evaluator, "train_dataloaders", None)
        val = getattr(evaluator, "val_dataloaders", None)
        if train is None:
            raise ValueError(f"{type(self).__name__} needs an evaluator with train_dataloaders "
                             "(e.g. nni.nas.evaluator.pytorch.Classification)")
        if isinstance(val, (list, tuple)):
            val = val[0] if val else None
        train_w, train_a = split_loader_for_bilevel(train, seed=0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.search(space.model_space, train_w, train_a, val, device=device)

    def list_models(self, sort: bool = True, limit: int | None = 1) -> Iterator[RawFormatModelSpace]:
        """The derived architecture, as a frozen NNI model (``export_top_models`` reads ``.sample``)."""
        if self.outcome is None:
            raise RuntimeError("the strategy has not been run")
        yield self.model_space.freeze(self.outcome.arch)

    def state_dict(self) -> dict:
        return {"arch": self.outcome.arch, "history": self.outcome.history} if self.outcome else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self.outcome = SearchOutcome(arch=state_dict["arch"], history=state_dict.get("history", []))
