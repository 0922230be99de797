"""The continuous relaxation of a model space, and the derivation of a discrete architecture from it.

NNI's ``OneShotStrategy.mutate_model`` walks the space and calls mutation hooks on every module;
the two hooks here replace each ``LayerChoice`` by a :class:`MixedOp` and each ``InputChoice`` by a
:class:`MixedInput`. Choices that share a label share one architecture parameter, so a derived
architecture is consistent wherever the label appears. Anything else mutable is refused by NNI's
``no_default_hook``, placed last.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.nas.nn.pytorch import InputChoice, LayerChoice

__all__ = ["reject_unsupported_hook", "ChoiceModule", "choice_modules", "MixedOp", "MixedInput", "mixed_op_hook", "mixed_input_hook", "arch_parameters", "derive_architecture",
           "alpha_snapshot", "is_zero_op"]


def is_zero_op(module: nn.Module) -> bool:
    """Candidates flagged ``is_zero`` (the ``none`` operation) contribute nothing and are never run."""
    return bool(getattr(module, "is_zero", False))


def _new_alpha(n: int) -> nn.Parameter:
    # Small random initialisation, as in the DARTS paper's code: near-uniform softmax, ties broken.
    return nn.Parameter(1e-3 * torch.randn(n))


class ChoiceModule(nn.Module):
    """Base of every relaxed choice: ``label``, candidate ``names`` and the architecture ``alpha``
    (``None`` where the choice is carried by other parameters, as DARTS nodes are by their edges)."""

    label: str
    names: list
    alpha: nn.Parameter | None


class MixedOp(ChoiceModule):
    """``sum_i softmax(alpha)_i * op_i(x)`` over the candidates of one ``LayerChoice``."""

    def __init__(self, label: str, names: list, candidates: list[nn.Module], alpha: nn.Parameter):
        super().__init__()
        if alpha.numel() != len(candidates):
            raise ValueError(f"label {label!r} is shared by choices with {alpha.numel()} and {len(candidates)} candidates")
        self.label = str(label)  # NNI labels are a str subclass that weights_only loading refuses
        self.names = list(names)
        self.candidates = nn.ModuleList(candidates)
        self.alpha = alpha
        self.zero = [is_zero_op(op) for op in candidates]
        if all(self.zero):
            raise ValueError(f"LayerChoice {label!r} has only zero candidates")

    def weights(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        out = None
        for i, op in enumerate(self.candidates):
            if self.zero[i]:
                continue
            y = op(x) * w[i]
            out = y if out is None else out + y
        return out


class MixedInput(ChoiceModule):
    """Relaxation of an ``InputChoice`` (``reduction='sum'`` or ``'mean'``).

    With ``edge_labels`` (each candidate input is the output of a ``LayerChoice``), the node is the
    plain sum of its incoming edges, as in the DARTS paper: the edges' own operation weights carry
    the choice. Otherwise the candidates are mixed by a softmax over their own parameter, scaled to
    the magnitude of the chosen ``n_chosen`` inputs.
    """

    def __init__(self, label: str, n_candidates: int, n_chosen: int, reduction: str,
                 alpha: nn.Parameter | None, edge_labels: list[str] | None):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise TypeError(f"InputChoice {label!r} with reduction={reduction!r} cannot be relaxed; use 'sum' or 'mean'")
        self.label = str(label)  # NNI labels are a str subclass that weights_only loading refuses
        self.names = list(range(n_candidates))
        self.n_candidates = n_candidates
        self.n_chosen = n_chosen
        self.reduction = reduction
        self.alpha = alpha
        self.edge_labels = [str(e) for e in edge_labels] if edge_labels else None

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != self.n_candidates:
            raise ValueError(f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(inputs)}")
        if self.alpha is None:
            out = sum(inputs)
            return out / self.n_candidates * self.n_chosen if self.reduction == "mean" else out
        w = F.softmax(self.alpha, dim=-1)
        out = sum(w[i] * x for i, x in enumerate(inputs))
        return out * self.n_chosen if self.reduction == "sum" else out


def mixed_op_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
    """NNI mutation hook: ``LayerChoice`` -> :class:`MixedOp` (alphas shared per label through ``memo``)."""
    if not isinstance(module, LayerChoice):
        return None
    names = list(module.names)
    alpha = memo.setdefault(module.label, _new_alpha(len(names)))
    return MixedOp(module.label, names, [module[n] for n in names], alpha)


def mixed_input_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
    """NNI mutation hook: ``InputChoice`` -> :class:`MixedInput`."""
    if not isinstance(module, InputChoice):
        return None
    edge_labels = getattr(module, "edge_labels", None)
    n_chosen = module.n_chosen if module.n_chosen is not None else 1
    alpha = None if edge_labels else memo.setdefault(module.label, _new_alpha(module.n_candidates))
    return MixedInput(module.label, module.n_candidates, n_chosen, module.reduction, alpha, edge_labels)


def reject_unsupported_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
    """NNI mutation hook: refuse NNI's ``Cell`` and ``Repeat``, whose forward the relaxations here
    do not follow (a ``Cell`` applies its operations to inputs it picks itself); write such spaces
    with plain ``LayerChoice`` / ``InputChoice``, as ``darts_cell`` does."""
    from nni.nas.nn.pytorch import Cell, Repeat

    if isinstance(module, (Cell, Repeat)):
        raise TypeError(f"module {name!r} is an NNI {type(module).__name__}, which nni_visplugin strategies do not "
                        "relax; build the space from LayerChoice / InputChoice (see the darts_cell space)")
    return None


def _choices(supernet: nn.Module) -> tuple[dict[str, MixedOp], dict[str, MixedInput]]:
    ops: dict[str, MixedOp] = {}
    inputs: dict[str, MixedInput] = {}
    for m in supernet.modules():
        if isinstance(m, MixedOp):
            ops.setdefault(m.label, m)
        elif isinstance(m, MixedInput):
            inputs.setdefault(m.label, m)
    return ops, inputs


def choice_modules(supernet: nn.Module) -> dict[str, ChoiceModule]:
    """The first relaxed module of every label that owns an architecture parameter."""
    found: dict[str, ChoiceModule] = {}
    for m in supernet.modules():
        if isinstance(m, ChoiceModule) and m.alpha is not None:
            found.setdefault(m.label, m)
    return found


def arch_parameters(supernet: nn.Module) -> dict[str, nn.Parameter]:
    """Architecture parameters by label (one tensor per label, however many modules share it)."""
    return {label: m.alpha for label, m in choice_modules(supernet).items()}


def alpha_snapshot(supernet: nn.Module) -> dict[str, dict[str, list]]:
    """Plain-data view of every architecture parameter: candidate names, raw values, softmax."""
    return {label: {"names": list(m.names), "alpha": m.alpha.detach().cpu().tolist(),
                    "softmax": F.softmax(m.alpha.detach(), -1).cpu().tolist()}
            for label, m in choice_modules(supernet).items()}


def _best_op(op: MixedOp) -> tuple[Any, float]:
    """Strongest non-zero candidate of an edge, and its softmax weight (zero op excluded, paper 2.4)."""
    w = op.weights().detach()
    best = max((i for i in range(len(op.names)) if not op.zero[i]), key=lambda i: float(w[i]))
    return op.names[best], float(w[best])


def derive_architecture(supernet: nn.Module) -> dict[str, Any]:
    """Discretise the relaxed supernet into a sample that NNI's ``freeze`` accepts.

    - Each ``LayerChoice``: its strongest candidate other than ``none``.
    - Each ``InputChoice`` with edges: the ``n_chosen`` incoming edges whose strongest non-``none``
      operation has the largest weight (DARTS paper, section 2.4: top-2 per node).
    - Other ``InputChoice``: the ``n_chosen`` largest of its own parameter.
    """
    ops, inputs = _choices(supernet)
    sample: dict[str, Any] = {label: _best_op(op)[0] for label, op in ops.items()}
    for label, m in inputs.items():
        if m.edge_labels:
            missing = [e for e in m.edge_labels if e not in ops]
            if missing:
                raise KeyError(f"InputChoice {label!r} names edges {missing} that are not LayerChoices of the space")
            strength = [_best_op(ops[e])[1] for e in m.edge_labels]
        else:
            strength = m.alpha.detach().tolist()
        ranked = sorted(range(m.n_candidates), key=lambda i: (-strength[i], i))
        sample[label] = sorted(ranked[: m.n_chosen])
    return sample
