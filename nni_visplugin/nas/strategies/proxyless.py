"""ProxylessNAS (Cai, Zhu, Han, ICLR 2019) as an NNI strategy: binary gates and a latency loss.

Each ``LayerChoice`` becomes a :class:`BinaryGateOp` that runs only sampled paths:

- weight step: one path per choice, drawn from ``p = softmax(alpha)``;
- architecture step (section 3.2.1): two paths drawn from ``p``, one of them active (drawn from
  ``p`` renormalised over the two); the inactive one runs without autograd, since its gate is 0. The output is ``sum_k g_k o_k`` with binary gates ``g``, and
  ``dL/dalpha_i = sum_j dL/dg_j p'_j (delta_ij - p'_i)`` over the two sampled paths, ``p'`` being
  ``p`` renormalised over them. After the update, the two sampled alphas are shifted so that the
  total probability of the two paths is unchanged, as in the paper.

Each ``InputChoice`` (a DARTS cell's node) becomes a :class:`BinaryGateInput` with its own alpha:
``n_chosen`` inputs are drawn from ``softmax(alpha)`` and only their edges run.

The latency term is the expected latency ``E`` under ``p`` (lookup table, :mod:`nni_visplugin.nas.latency`),
differentiable in alpha, against the target ``T`` (section 3.3 and the reference's two forms):
``loss + latency_lambda * (E - T) / T`` (``latency_loss='add'``) or
``loss * (log E / log T) ** latency_beta`` (``latency_loss='mul'``, times in milliseconds, so T > 1).

When the active path of a choice is ``none`` (a zero operation), that choice's alpha is not
updated in the step, as in the reference: the gate's gradient then carries no information.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.nas.nn.pytorch import InputChoice, LayerChoice

from nni_visplugin.config.fields import setting
from nni_visplugin.nas.latency import LatencyTable, device_fingerprint, load_or_measure
from nni_visplugin.nas.relax import ChoiceModule, choice_modules, is_zero_op
from nni_visplugin.nas.strategies.base import BilevelState, BilevelStrategy, OneShotConfig, SearchOutcome, with_default
from nni_visplugin.nas.training import check_finite, evaluate
from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.utils.files import cache_dir
from nni_visplugin.utils.registry import SPACES, register_strategy

__all__ = ["ProxylessConfig", "ProxylessStrategy", "PathSampler", "BinaryGateOp", "BinaryGateInput"]

_logger = logging.getLogger(__name__)

LATENCY_LOSSES = ("none", "add", "mul")


@dataclass(frozen=True)
class ProxylessConfig(OneShotConfig):
    """ProxylessNAS settings; the optimiser defaults follow the paper (Adam with beta1 = 0 for alpha,
    so the update of an unsampled path, whose gradient is zero, is zero)."""

    weight_lr: float = with_default(OneShotConfig, "weight_lr", 0.05)
    weight_lr_min: float = with_default(OneShotConfig, "weight_lr_min", 0.0)
    weight_decay: float = with_default(OneShotConfig, "weight_decay", 4e-5)
    arch_lr: float = with_default(OneShotConfig, "arch_lr", 1e-3)
    arch_weight_decay: float = with_default(OneShotConfig, "arch_weight_decay", 0.0)
    arch_beta1: float = with_default(OneShotConfig, "arch_beta1", 0.0)
    latency_loss: str = setting("none", "latency term of the architecture loss", choices=LATENCY_LOSSES)
    latency_lambda: float = setting(0.1, "'add': weight of (E[latency] - target) / target", at_least=0)
    latency_target_ms: float = setting(0.0, "the latency budget T of 'add' and 'mul', in ms", at_least=0)
    latency_beta: float = setting(0.6, "'mul': exponent of log E[latency] / log T", at_least=0)
    latency_table: str = setting("", "path; empty: a cache file keyed by space, device and thread count")
    latency_batch_size: int = setting(1, "the deployment batch size the table is measured at", at_least=1)
    latency_rebuild: str = setting("auto", "'never': use a table measured on another device as it is",
                                   choices=("auto", "never"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latency_loss == "add" and not self.latency_target_ms > 0:
            raise ConfigError("latency_loss 'add' needs latency_target_ms > 0 (the penalty is relative to it)")
        if self.latency_loss == "mul" and not self.latency_target_ms > 1:
            raise ConfigError("latency_loss 'mul' needs latency_target_ms > 1 (its factor is "
                              "(log E / log T) ** latency_beta, with times in milliseconds)")


class PathSampler:
    """The current sample, shared by every gated module (modules with one label share one draw)."""

    def __init__(self) -> None:
        self.mode = "weight"  # weight | arch | fixed
        self.ops: dict[str, Any] = {}  # label -> index (weight, fixed) or (i, j, active) (arch)
        self.inputs: dict[str, list[int]] = {}  # label -> chosen candidate indices
        self.gates: dict[str, tuple[str, int]] = {}  # edge label -> (input label, index)

    def edge_active(self, label: str) -> bool:
        gate = self.gates.get(label)
        return gate is None or gate[1] in self.inputs[gate[0]]


class BinaryGateOp(ChoiceModule):
    def __init__(self, label: str, names: list, candidates: list[nn.Module], alpha: nn.Parameter,
                 sampler: PathSampler):
        super().__init__()
        self.label, self.names, self.alpha = str(label), list(names), alpha
        self.candidates = nn.ModuleList(candidates)
        self.zero = [is_zero_op(c) for c in candidates]
        self._sampler = [sampler]  # a list: keeps it out of the module tree

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        sampler = self._sampler[0]
        if not sampler.edge_active(self.label):
            return None  # an edge its node did not draw: not computed at all
        choice = sampler.ops[self.label]
        if sampler.mode != "arch":
            return self.candidates[choice](x)
        i, j, active = choice
        if i == j:
            return self.candidates[i](x)
        p = F.softmax(self.alpha[[i, j]], dim=-1)
        hard = torch.zeros_like(p)
        hard[active] = 1.0
        gates = hard + p - p.detach()  # value: the binary gate; gradient: through p'
        outs = []
        for k, idx in enumerate((i, j)):
            if k == active:
                outs.append(self.candidates[idx](x))
            else:
                # Its gate is 0: nothing flows back into this path, only <dL/dout, o> reaches alpha.
                # No graph is kept for it, so the step holds its output alone, not its activations.
                with torch.no_grad():
                    outs.append(self.candidates[idx](x))
        return gates[0] * outs[0] + gates[1] * outs[1]


class BinaryGateInput(ChoiceModule):
    kind = "input"

    def __init__(self, label: str, n_candidates: int, n_chosen: int, reduction: str, alpha: nn.Parameter,
                 sampler: PathSampler, edge_labels: list[str] | None = None):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise TypeError(f"InputChoice {label!r} with reduction={reduction!r} is not supported; use 'sum' or 'mean'")
        self.label, self.names, self.alpha = str(label), list(range(n_candidates)), alpha
        self.n_candidates, self.n_chosen, self.reduction = n_candidates, n_chosen, reduction
        # Candidate j is the output of the gated operation edge_labels[j] (a DARTS cell's node).
        self.edge_labels = [str(e) for e in edge_labels] if edge_labels else None
        self._sampler = [sampler]

    def forward(self, inputs: list[torch.Tensor | None]) -> torch.Tensor:
        sampler = self._sampler[0]
        chosen = sampler.inputs[self.label]
        xs = [inputs[j] for j in chosen]
        if sampler.mode == "arch":
            p = F.softmax(self.alpha[chosen], dim=-1)
            gates = 1.0 + p - p.detach()  # every drawn input is on; the gradient moves alpha between them
            out = sum(g * x for g, x in zip(gates, xs))
        else:
            out = sum(xs)
        return out / len(xs) if self.reduction == "mean" else out


def _new_alpha(n: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(n))  # the paper starts from a uniform distribution


@register_strategy("proxyless")
class ProxylessStrategy(BilevelStrategy):
    """ProxylessNAS as an NNI ``Strategy``; keyword arguments are the fields of :class:`ProxylessConfig`."""

    config_class = ProxylessConfig
    name = "proxyless"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.sampler = PathSampler()
        self._module_cache: tuple[nn.Module, dict, dict] | None = None
        self.latency_table: LatencyTable | None = None
        self._space_name: str | None = None

    # ---------------------------------------------------------------- supernet
    def choice_hooks(self):
        return [self._op_hook, self._input_hook]

    def _op_hook(self, module, name, memo, kwargs):
        if not isinstance(module, LayerChoice):
            return None
        names = list(module.names)
        alpha = memo.setdefault(module.label, _new_alpha(len(names)))
        return BinaryGateOp(module.label, names, [module[n] for n in names], alpha, self.sampler)

    def _input_hook(self, module, name, memo, kwargs):
        if not isinstance(module, InputChoice):
            return None
        edge_labels = getattr(module, "edge_labels", None)
        for j, edge in enumerate(edge_labels or []):
            self.sampler.gates[str(edge)] = (str(module.label), j)
        alpha = memo.setdefault(module.label, _new_alpha(module.n_candidates))
        return BinaryGateInput(module.label, module.n_candidates, module.n_chosen or 1, module.reduction, alpha,
                               self.sampler, edge_labels)

    def gated_modules(self, supernet: nn.Module) -> tuple[dict[str, BinaryGateOp], dict[str, BinaryGateInput]]:
        """The first gated module of every label, operations and inputs apart."""
        # Looked up every step: walk the module tree once per supernet, not once per step.
        if self._module_cache is None or self._module_cache[0] is not supernet:
            mods = choice_modules(supernet)
            self._module_cache = (supernet,
                                  {k: m for k, m in mods.items() if isinstance(m, BinaryGateOp)},
                                  {k: m for k, m in mods.items() if isinstance(m, BinaryGateInput)})
        return self._module_cache[1], self._module_cache[2]

    # ---------------------------------------------------------------- sampling
    def _draw_inputs(self, inputs: dict[str, BinaryGateInput]) -> None:
        for label, m in inputs.items():
            p = F.softmax(m.alpha.detach(), -1)
            self.sampler.inputs[label] = sorted(torch.multinomial(p, m.n_chosen, replacement=False).tolist())

    def resample(self, supernet: nn.Module, mode: str) -> None:
        """Draw the paths of the next step (``weight``: one per choice; ``arch``: two, one active)."""
        ops, inputs = self.gated_modules(supernet)
        self.sampler.mode = mode
        self._draw_inputs(inputs)
        for label, m in ops.items():
            p = F.softmax(m.alpha.detach(), -1)
            if mode == "weight":
                self.sampler.ops[label] = int(torch.multinomial(p, 1))
            elif len(m.names) == 1:
                self.sampler.ops[label] = (0, 0, 0)
            else:
                i, j = torch.multinomial(p, 2, replacement=False).tolist()
                active = int(torch.multinomial(p[[i, j]] / p[[i, j]].sum(), 1))
                self.sampler.ops[label] = (i, j, active)

    def fix(self, arch: dict[str, Any], supernet: nn.Module) -> None:
        """Run the supernet as the discrete architecture ``arch`` (for evaluation)."""
        ops, inputs = self.gated_modules(supernet)
        self.sampler.mode = "fixed"
        for label, m in ops.items():
            self.sampler.ops[label] = m.names.index(arch[label])
        for label in inputs:
            self.sampler.inputs[label] = list(arch[label])

    # ---------------------------------------------------------------- latency
    def prepare(self, model_space: nn.Module, supernet: nn.Module, device) -> None:
        """Load or measure the latency lookup table of the space on ``device``."""
        cfg = self.config
        try:
            self._space_name = SPACES.name_of(type(model_space))
        except KeyError:
            if cfg.latency_loss != "none":
                raise ValueError(f"a latency loss needs a lookup table, which is measured for registered spaces; "
                                 f"register {type(model_space).__name__} with nni_visplugin.register_space") from None
            _logger.warning("%s is not a registered space: searching without a latency table",
                            type(model_space).__name__)
            self.latency_table = None
            return
        kwargs = json.loads(json.dumps(dict(getattr(model_space, "trace_kwargs", {}))))
        path = cfg.latency_table or str(self.default_table_path(self._space_name, kwargs, device))
        self.latency_table = load_or_measure(path, self._space_name, kwargs, device, cfg.latency_batch_size,
                                             rebuild=cfg.latency_rebuild)

    @staticmethod
    def default_table_path(space: str, kwargs: dict[str, Any], device) -> Path:
        key = json.dumps({"space": space, "kwargs": kwargs, **device_fingerprint(device)}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return cache_dir() / "latency" / f"{space}-{digest}.json"

    def expected_latency(self, supernet: nn.Module) -> torch.Tensor:
        ops, inputs = self.gated_modules(supernet)
        probs = {label: F.softmax(m.alpha, -1) for label, m in ops.items()}
        names = {label: m.names for label, m in ops.items()}
        gate_probs = {label: F.softmax(m.alpha, -1) for label, m in inputs.items()}
        n_chosen = {label: m.n_chosen for label, m in inputs.items()}
        return self.latency_table.expected(probs, names, gate_probs, n_chosen)

    def latency_term(self, loss: torch.Tensor, supernet: nn.Module) -> torch.Tensor:
        """``loss`` with the configured latency term (section 3.3)."""
        cfg = self.config
        if cfg.latency_loss == "none":
            return loss
        latency = self.expected_latency(supernet)
        target = cfg.latency_target_ms
        if cfg.latency_loss == "add":
            return loss + cfg.latency_lambda * (latency - target) / target
        # Below 1 ms log E would be negative; a network that fast is far under any target above 1 ms.
        return loss * (torch.log(latency.clamp_min(1.0 + 1e-6)) / math.log(target)) ** cfg.latency_beta

    # ---------------------------------------------------------------- steps
    def arch_step(self, state: BilevelState, batch_w: tuple[torch.Tensor, torch.Tensor],
                  batch_a: tuple[torch.Tensor, torch.Tensor], where: str) -> None:
        supernet = state.supernet
        self.resample(supernet, "arch")
        ops, _ = self.gated_modules(supernet)
        before = {label: m.alpha.detach().clone() for label, m in ops.items()}
        loss = self.latency_term(state.criterion(supernet(batch_a[0]), batch_a[1]), supernet)
        check_finite(loss, f"architecture step, {where}")
        grads = torch.autograd.grad(loss, state.alphas, allow_unused=True)
        # A choice whose active path is the zero operation is left as it is (the reference's rule).
        frozen = {id(m.alpha) for label, m in ops.items() if m.zero[self._active(label)]}
        for a, g in zip(state.alphas, grads):
            a.grad = None if id(a) in frozen else (g if g is not None else torch.zeros_like(a))
        state.a_opt.step()
        state.a_opt.zero_grad(set_to_none=True)
        # Keep the total probability of the two sampled paths unchanged (paper, section 3.2.1).
        with torch.no_grad():
            for label, m in ops.items():
                i, j, _ = self.sampler.ops[label]
                if i == j or id(m.alpha) in frozen:
                    continue
                idx = [i, j]
                m.alpha[idx] -= torch.logsumexp(m.alpha[idx], 0) - torch.logsumexp(before[label][idx], 0)

    def _active(self, label: str) -> int:
        """The candidate index of the active path of ``label`` in the current architecture step."""
        i, j, active = self.sampler.ops[label]
        return (i, j)[active]

    def weight_loss(self, state: BilevelState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.resample(state.supernet, "weight")
        return state.criterion(state.supernet(x), y)

    def evaluate_supernet(self, supernet: nn.Module, loader: Iterable, device) -> float:
        self.fix(self.derive(supernet), supernet)
        return evaluate(supernet, loader, device)

    def epoch_extras(self, supernet: nn.Module, arch: dict[str, Any]) -> dict[str, Any]:
        if self.latency_table is None:
            return {}
        with torch.no_grad():
            expected = float(self.expected_latency(supernet))
        return {"latency_expected_ms": expected, "latency_predicted_ms": self.latency_table.predict(arch)}

    def derive(self, supernet: nn.Module) -> dict[str, Any]:
        """Most likely candidate of every choice; an edge of a cell never derives to ``none``."""
        ops, inputs = self.gated_modules(supernet)
        arch: dict[str, Any] = {}
        for label, m in ops.items():
            order = torch.argsort(m.alpha.detach(), descending=True).tolist()
            if label in self.sampler.gates:
                order = [k for k in order if not m.zero[k]] or order
            arch[label] = m.names[order[0]]
        for label, m in inputs.items():
            ranked = sorted(range(m.n_candidates), key=lambda k: (-float(m.alpha.detach()[k]), k))
            arch[label] = sorted(ranked[: m.n_chosen])
        return arch

    def finalize(self, state: BilevelState, train_a: Iterable, device) -> SearchOutcome:
        outcome = super().finalize(state, train_a, device)
        outcome.latency_table = self.latency_table
        return outcome
