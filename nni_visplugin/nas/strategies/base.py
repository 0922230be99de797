"""The bilevel one-shot search every strategy here shares, with the steps a relaxation replaces.

:class:`BilevelStrategy` builds the supernet, its two optimisers (SGD with momentum under a cosine
schedule for the weights, Adam for the architecture parameters), alternates the architecture and
the weight steps on the two halves of the training data, records each epoch (health metrics
included), checkpoints and resumes, stops early on a rule of DARTS+, and speaks NNI's ``Strategy``
interface. A relaxation (DARTS, ProxylessNAS) subclasses it and overrides the steps it changes:
:meth:`~BilevelStrategy.choice_hooks`, :meth:`~BilevelStrategy.arch_step`,
:meth:`~BilevelStrategy.derive` and, where it needs them, the other hooks grouped with those.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from nni_visplugin.config.fields import setting, validate
from nni_visplugin.data.loader import bilevel_halves
from nni_visplugin.nas.fastconv import enable_fast_depthwise
from nni_visplugin.nas.health import alpha_entropy, count_skips, decision, learnable_kept
from nni_visplugin.nas.relax import alpha_snapshot, arch_parameters, learnable_candidates, reject_unsupported_hook
from nni_visplugin.nas.strategies import _nni
from nni_visplugin.nas.training import check_finite, evaluate, memory_format, to_layout
from nni_visplugin.utils.checkpoints import CheckpointError, SearchCheckpoints
from nni_visplugin.utils.errors import ConfigError, ConfigTypeError
from nni_visplugin.utils.seeding import rng_state, set_rng_state

__all__ = ["OneShotConfig", "SearchOutcome", "BilevelState", "BilevelStrategy", "with_default", "split_params",
           "split_loader_for_bilevel", "EARLY_STOP_RULES"]

_logger = logging.getLogger(__name__)

EARLY_STOP_RULES = ("none", "skips", "stable")


def with_default(config: type, name: str, default: Any) -> Any:
    """Field ``name`` of ``config`` with another default: a subclass retunes it while its help and
    accepted values stay declared once, where ``config`` declares them."""
    declared = {f.name: f for f in dataclasses.fields(config)}[name]
    return dataclasses.field(default=default, metadata=declared.metadata)


@dataclass(frozen=True)
class OneShotConfig:
    """Settings every bilevel one-shot search shares: the weight and architecture optimisers."""

    epochs: int = setting(50, "search epochs", at_least=1)
    weight_lr: float = setting(0.025, "initial learning rate of the weights' SGD (cosine schedule)", above=0)
    weight_lr_min: float = setting(0.001, "final learning rate of the weights' SGD", at_least=0)
    momentum: float = setting(0.9, "SGD momentum of the weights", at_least=0, below=1)
    weight_decay: float = setting(3e-4, "weight decay of the weights", at_least=0)
    grad_clip: float = setting(5.0, "gradient-norm clip of every weight step", above=0)
    arch_lr: float = setting(3e-4, "Adam learning rate of the architecture parameters", above=0)
    arch_weight_decay: float = setting(1e-3, "weight decay of the architecture parameters", at_least=0)
    arch_beta1: float = setting(0.5, "Adam beta1 of the architecture parameters", at_least=0, below=1)
    arch_beta2: float = setting(0.999, "Adam beta2 of the architecture parameters", at_least=0, below=1)
    warmup_epochs: int = setting(0, "epochs of weight-only training before alpha moves", at_least=0)
    # Health monitor: every epoch records the operations' normalised alpha entropy and the skip
    # connections kept in the derived normal cell. early_stop ends the search on a rule of DARTS+
    # (Liang et al. 2019): "skips" once the normal cell keeps early_stop_skips skip connections
    # (criterion 1), "stable" once the ranking of every edge's learnable operations (those with
    # parameters) has not changed for early_stop_patience epochs (criterion 2).
    early_stop: str = setting("none", "early-stop rule of DARTS+", choices=EARLY_STOP_RULES)
    early_stop_skips: int = setting(2, "'skips': skip connections in the normal cell that stop", at_least=1)
    early_stop_patience: int = setting(10, "'stable': epochs of an unchanged ranking that stop", at_least=1)

    def __post_init__(self) -> None:
        validate(self)
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        if self.weight_lr_min > self.weight_lr:
            raise ConfigError(f"weight_lr_min ({self.weight_lr_min}) exceeds weight_lr ({self.weight_lr})")


@dataclass
class SearchOutcome:
    """What a search returns: plain data plus the trained supernet."""

    arch: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    supernet: nn.Module | None = None
    latency_table: Any = None  # set by strategies that search against a latency lookup table
    # How decided the alphas ended (nni_visplugin.nas.health.decision), with the warning of an undecided search.
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def last_val_accuracy(self) -> float | None:
        return self.history[-1].get("val_accuracy") if self.history else None


@dataclass
class BilevelState:
    """What the steps of one search share: the supernet, its two parameter groups and their optimisers."""

    supernet: nn.Module
    weight_names: list[str]
    weights: list[nn.Parameter]
    alphas: list[nn.Parameter]
    w_opt: torch.optim.Optimizer | None = None
    a_opt: torch.optim.Optimizer | None = None
    sched: Any = None
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(default_factory=nn.CrossEntropyLoss)
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    lr: float = 0.0  # the weights' learning rate in this epoch (the virtual step's xi, second-order DARTS)


def split_params(supernet: nn.Module) -> tuple[list[str], list[nn.Parameter], list[nn.Parameter]]:
    arch_ids = {id(p) for p in arch_parameters(supernet).values()}
    names, weights = [], []
    for name, p in supernet.named_parameters():
        if id(p) not in arch_ids:
            names.append(name)
            weights.append(p)
    return names, weights, list(arch_parameters(supernet).values())


def split_loader_for_bilevel(loader: Any, seed: int) -> tuple[Iterable, Iterable]:
    """Halve a DataLoader's dataset: weights train on one half, the architecture on the other."""
    from torch.utils.data import DataLoader, Subset

    dataset = loader.dataset
    halves = [Subset(dataset, idx.tolist()) for idx in bilevel_halves(len(dataset), seed)]
    batch = loader.batch_size or 64
    return tuple(DataLoader(h, batch_size=batch, shuffle=True, drop_last=False,
                            generator=torch.Generator().manual_seed(seed + i)) for i, h in enumerate(halves))


class BilevelStrategy(_nni.Strategy):
    """A bilevel one-shot search as an NNI ``Strategy``; keyword arguments are the fields of
    :attr:`config_class`.

    Use it standalone through :meth:`search`, or inside ``nni.nas.experiment.NasExperiment`` with an
    NNI Lightning evaluator (``nni.nas.evaluator.pytorch.Classification``): its training data is
    halved between the weight and the architecture steps and its validation data measures progress.
    """

    config_class: type = OneShotConfig
    name = "one-shot"  # in log lines

    def __new__(cls, *args: Any, **kwargs: Any):
        return super().__new__(_nni.instance_class(cls))

    def __init__(self, **kwargs: Any):
        super().__init__()
        known = [f.name for f in dataclasses.fields(self.config_class)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ConfigTypeError(f"strategy {type(self).__name__} got unknown setting(s) {', '.join(unknown)}; "
                                  f"it takes: {', '.join(known)}")
        self.config = self.config_class(**kwargs)
        self.outcome: SearchOutcome | None = None
        self.history: list[dict[str, Any]] = []
        self._learnable: dict[str, list[int]] = {}  # per choice of operations: the candidates DARTS+ ranks

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())

    # ----------------------------------------------------------------- the supernet
    def default_mutation_hooks(self) -> list[_nni.MutationHook]:
        """NNI mutation hooks, in order: refuse what no relaxation follows, relax the choices, and
        raise on any mutable left unconverted."""
        return [reject_unsupported_hook, *self.choice_hooks(), _nni.no_default_hook]

    def mutate_model(self, model: nn.Module) -> nn.Module:
        """Convert the model space ``model`` into the supernet, in place."""
        return _nni.mutate_model(model, self.default_mutation_hooks(), self)

    def build_supernet(self, model_space: nn.Module) -> nn.Module:
        """A relaxed copy of ``model_space``; the space itself is left untouched for ``freeze``."""
        supernet = self.mutate_model(copy.deepcopy(model_space))
        enable_fast_depthwise(supernet)
        return supernet

    def new_state(self, supernet: nn.Module) -> BilevelState:
        """The optimisers of a new search on ``supernet``."""
        cfg = self.config
        names, weights, alphas = split_params(supernet)
        if not alphas:
            raise ValueError("the model space has no LayerChoice or InputChoice to search")
        w_opt = torch.optim.SGD(weights, lr=cfg.weight_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        a_opt = torch.optim.Adam(alphas, lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2),
                                 weight_decay=cfg.arch_weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg.epochs, eta_min=cfg.weight_lr_min)
        return BilevelState(supernet, names, weights, alphas, w_opt, a_opt, sched)

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
        supernet = self.build_supernet(model_space).to(device, memory_format=memory_format(device))
        self.prepare(model_space, supernet, device)
        state = self.new_state(supernet)
        self._learnable = learnable_candidates(supernet)
        self.history = state.history
        checkpoints = SearchCheckpoints(checkpoint_dir) if checkpoint_dir is not None else None
        fingerprint = self._fingerprint(model_space)
        loaders = (train_w, train_a)
        first_epoch = self._resume(state, checkpoints, fingerprint, loaders) if checkpoints is not None else 0
        for epoch in range(first_epoch, self.config.epochs):
            state.epoch = epoch
            record = self._run_epoch(state, train_w, train_a, val, device)
            stop = self._stop_reason(state.history)
            if stop:
                record["early_stop"] = stop
            self._log_epoch(record)
            if checkpoints is not None:
                checkpoints.save(epoch, self._checkpoint(state, fingerprint, loaders))
            if on_epoch is not None:
                on_epoch(epoch, record)
            if stop:
                _logger.warning("%s: stopping early after epoch %d: %s", self.name, epoch + 1, stop)
                break
        self.outcome = self.finalize(state, train_a, device)
        if state.history:
            self.outcome.decision = decision(state.history[-1]["alpha_entropy"],
                                             learnable=learnable_kept(state.supernet, self.outcome.arch))
            if self.outcome.decision["warning"]:
                _logger.warning("%s: %s", self.name, self.outcome.decision["warning"])
        return self.outcome

    def _run_epoch(self, state: BilevelState, train_w: Iterable, train_a: Iterable, val: Iterable | None,
                  device: torch.device | str) -> dict[str, Any]:
        """One epoch of alternating steps; returns its record, also appended to ``state.history``."""
        start = time.perf_counter()
        state.supernet.train()
        self.on_epoch_start(state)
        state.lr = state.w_opt.param_groups[0]["lr"]
        train_loss = self._train_epoch(state, train_w, train_a, device)
        state.sched.step()
        record = self._record(state, train_loss, val, device)
        record["seconds"] = time.perf_counter() - start
        state.history.append(record)
        return record

    def _train_epoch(self, state: BilevelState, train_w: Iterable, train_a: Iterable,
                     device: torch.device | str) -> float:
        update_arch = state.epoch >= self.config.warmup_epochs
        loss_sum, n_seen, steps = 0.0, 0, 0
        for step, ((xw, yw), (xa, ya)) in enumerate(zip(train_w, train_a)):
            xw, yw, xa, ya = to_layout(xw, device), yw.to(device), to_layout(xa, device), ya.to(device)
            where = f"epoch {state.epoch} step {step}"
            if update_arch:
                self.arch_step(state, (xw, yw), (xa, ya), where)
            loss = self._weight_step(state, xw, yw, where)
            loss_sum += loss.item() * yw.numel()
            n_seen += yw.numel()
            steps += 1
        if steps == 0:
            raise ValueError("the training loaders yielded no batch")
        return loss_sum / n_seen

    def _weight_step(self, state: BilevelState, x: torch.Tensor, y: torch.Tensor, where: str) -> torch.Tensor:
        """One SGD step of the weights on ``(x, y)``; returns the loss."""
        loss = self.weight_loss(state, x, y)
        check_finite(loss, f"weight step, {where}")
        grads = torch.autograd.grad(loss, state.weights, allow_unused=True)
        for p, g in zip(state.weights, grads):
            p.grad = g  # None for operations the step did not run: SGD skips them
        nn.utils.clip_grad_norm_(state.weights, self.config.grad_clip)
        state.w_opt.step()
        state.w_opt.zero_grad(set_to_none=True)
        return loss

    def _record(self, state: BilevelState, train_loss: float, val: Iterable | None,
                device: torch.device | str) -> dict[str, Any]:
        supernet = state.supernet
        arch = self.derive(supernet)
        record: dict[str, Any] = {"epoch": state.epoch, "train_loss": train_loss, "weight_lr": state.lr,
                                  "alphas": alpha_snapshot(supernet), "arch": arch,
                                  "alpha_entropy": alpha_entropy(supernet), "normal_skips": count_skips(supernet, arch)}
        record.update(self.epoch_extras(supernet, arch))
        if val is not None:
            record["val_accuracy"] = self.evaluate_supernet(supernet, val, device)
        return record

    def _log_epoch(self, record: dict[str, Any]) -> None:
        _logger.info("%s epoch %d/%d  train_loss %.4f  val_acc %s  alpha_entropy %.3f  normal-cell skips %d  "
                     "(%.1f s)", self.name, record["epoch"] + 1, self.config.epochs, record["train_loss"],
                     f"{record['val_accuracy']:.4f}" if "val_accuracy" in record else "-",
                     record["alpha_entropy"], record["normal_skips"], record["seconds"])

    def _stop_reason(self, history: list[dict[str, Any]]) -> str | None:
        """The early-stop rule that fires on ``history``, if any (only epochs where alpha moved count)."""
        cfg = self.config
        moving = [r for r in history if r["epoch"] >= cfg.warmup_epochs]
        if cfg.early_stop == "skips" and moving and moving[-1].get("normal_skips", 0) >= cfg.early_stop_skips:
            return (f"{moving[-1]['normal_skips']} skip connections in the normal cell "
                    f"(rule: skips >= {cfg.early_stop_skips})")
        if cfg.early_stop == "stable" and len(moving) > cfg.early_stop_patience:
            def ranking(record):  # of the learnable operations only; edge-normalisation weights aside
                return {label: sorted(keep, key=lambda i: -record["alphas"][label]["alpha"][i])
                        for label, keep in self._learnable.items() if label in record["alphas"]}
            last = moving[-cfg.early_stop_patience - 1:]
            if all(ranking(r) == ranking(last[0]) for r in last[1:]):
                return f"the operations' ranking unchanged for {cfg.early_stop_patience} epochs"
        return None

    # ----------------------------------------------------------------- checkpoints
    def _fingerprint(self, model_space: nn.Module) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: the strategy, its settings and the space."""
        return {"strategy": type(self).__name__, "config": asdict(self.config), "space": type(model_space).__name__,
                "space_kwargs": repr(sorted(getattr(model_space, "trace_kwargs", {}).items()))}

    @staticmethod
    def _checkpoint(state: BilevelState, fingerprint: dict[str, Any], loaders: tuple) -> dict[str, Any]:
        return {"fingerprint": fingerprint, "supernet": state.supernet.state_dict(), "w_opt": state.w_opt.state_dict(),
                "a_opt": state.a_opt.state_dict(), "sched": state.sched.state_dict(), "history": state.history,
                "rng": rng_state(),
                "loaders": [ld.state_dict() if hasattr(ld, "state_dict") else None for ld in loaders]}

    def _resume(self, state: BilevelState, checkpoints: SearchCheckpoints, fingerprint: dict[str, Any],
                loaders: tuple) -> int:
        """Load the latest checkpoint into ``state``, if there is one; returns the first epoch to run."""
        found = checkpoints.load_latest()
        if found is None:
            return 0
        path, saved = found
        if saved.get("fingerprint") != fingerprint:
            raise CheckpointError(f"checkpoint {path} was written by a different search "
                                  f"({saved.get('fingerprint')}); use another output directory")
        state.supernet.load_state_dict(saved["supernet"])
        state.w_opt.load_state_dict(saved["w_opt"])
        state.a_opt.load_state_dict(saved["a_opt"])
        state.sched.load_state_dict(saved["sched"])
        state.history.extend(saved["history"])
        set_rng_state(saved["rng"])
        for loader, loader_state in zip(loaders, saved["loaders"]):
            if loader_state is not None:
                loader.load_state_dict(loader_state)
        first_epoch = saved["epoch"] + 1
        _logger.info("resuming from %s: epochs 1-%d done", path, first_epoch)
        if self._stop_reason(state.history):  # it had already stopped early
            return self.config.epochs
        return first_epoch

    # ----------------------------------------------------------------- steps a relaxation replaces
    def choice_hooks(self) -> list[_nni.MutationHook]:
        """The NNI mutation hooks that turn the space's choices into this relaxation's modules."""
        raise NotImplementedError(f"{type(self).__name__} does not relax any choice")

    def prepare(self, model_space: nn.Module, supernet: nn.Module, device: torch.device | str) -> None:
        """Called once the supernet is built, before training."""

    def on_epoch_start(self, state: BilevelState) -> None:
        """Called before the steps of epoch ``state.epoch``."""

    def arch_step(self, state: BilevelState, batch_w: tuple[torch.Tensor, torch.Tensor],
                  batch_a: tuple[torch.Tensor, torch.Tensor], where: str) -> None:
        """One step of the architecture parameters (``batch_a`` from their half of the data)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement the architecture step")

    def weight_loss(self, state: BilevelState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss the weight step descends."""
        return state.criterion(state.supernet(x), y)

    def evaluate_supernet(self, supernet: nn.Module, loader: Iterable, device: torch.device | str) -> float:
        """The accuracy recorded as an epoch's ``val_accuracy``."""
        return evaluate(supernet, loader, device)

    def epoch_extras(self, supernet: nn.Module, arch: dict[str, Any]) -> dict[str, Any]:
        """More entries of an epoch's record."""
        return {}

    def derive(self, supernet: nn.Module) -> dict[str, Any]:
        """The discrete architecture the supernet stands for now (a sample NNI's ``freeze`` accepts)."""
        raise NotImplementedError(f"{type(self).__name__} does not derive an architecture")

    def finalize(self, state: BilevelState, train_a: Iterable, device: torch.device | str) -> SearchOutcome:
        """The outcome of a finished search (``train_a``: the architecture half of the data)."""
        return SearchOutcome(arch=self.derive(state.supernet), history=state.history, supernet=state.supernet)

    # ----------------------------------------------------------------- NNI Strategy interface
    def _initialize(self, model_space, engine):
        from nni.nas.space import RawFormatModelSpace

        if not isinstance(model_space, RawFormatModelSpace):
            # NasExperiment chose them from the strategy's class (see _nni.instance_class).
            raise TypeError(f"{type(self).__name__} needs the 'raw' model format and the sequential engine, got "
                            f"{type(model_space).__name__}: create the strategy after importing nni.nas.experiment, "
                            "or pass NasExperimentConfig(execution_engine='sequential', model_format='raw')")
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

    def list_models(self, sort: bool = True, limit: int | None = 1) -> Iterator:
        """The derived architecture, as a frozen NNI model (``export_top_models`` reads ``.sample``)."""
        if self.outcome is None:
            raise RuntimeError("the strategy has not been run")
        yield self.model_space.freeze(self.outcome.arch)

    def state_dict(self) -> dict:
        return {"arch": self.outcome.arch, "history": self.outcome.history} if self.outcome else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self.outcome = SearchOutcome(arch=state_dict["arch"], history=state_dict.get("history", []))
