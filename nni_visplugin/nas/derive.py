"""Derivation: from a relaxed supernet to a discrete architecture.

:func:`derive_architecture` is DARTS's rule (section 2.4); :func:`select_by_perturbation` is
DARTS-PT's selection (Wang et al., ICLR 2021), which measures what the supernet loses without each
candidate instead of reading its alpha.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_visplugin.nas.relax import MixedInput, MixedOp, mixed_modules

__all__ = ["derive_architecture", "select_by_perturbation"]


def _best_op(op: MixedOp) -> tuple[Any, float]:
    """Strongest non-zero candidate of an edge, and its softmax weight (zero op excluded, paper 2.4)."""
    w = op.weights().detach()
    best = max((i for i in range(len(op.names)) if not op.zero[i]), key=lambda i: float(w[i]))
    return op.names[best], float(w[best])


def derive_architecture(supernet: nn.Module) -> dict[str, Any]:
    """Discretise the relaxed supernet into a sample that NNI's ``freeze`` accepts.

    - Each ``LayerChoice``: its strongest candidate other than ``none``.
    - Each ``InputChoice`` with edges: the ``n_chosen`` incoming edges whose strongest non-``none``
      operation has the largest weight (DARTS paper, section 2.4: top-2 per node), that weight
      multiplied by the node's own weight of the edge under edge normalisation (PC-DARTS, 3.3).
    - Other ``InputChoice``: the ``n_chosen`` largest of its own parameter.
    """
    ops, inputs = mixed_modules(supernet)
    sample: dict[str, Any] = {label: _best_op(op)[0] for label, op in ops.items()}
    for label, m in inputs.items():
        if m.edge_labels:
            missing = [e for e in m.edge_labels if e not in ops]
            if missing:
                raise KeyError(f"InputChoice {label!r} names edges {missing} that are not LayerChoices of the space")
            strength = [_best_op(ops[e])[1] for e in m.edge_labels]
            if m.alpha is not None:  # edge normalisation: the node's own weight of each edge counts too
                beta = F.softmax(m.alpha.detach(), -1).tolist()
                strength = [s * b for s, b in zip(strength, beta)]
        else:
            strength = m.alpha.detach().tolist()
        ranked = sorted(range(m.n_candidates), key=lambda i: (-strength[i], i))
        sample[label] = sorted(ranked[: m.n_chosen])
    return sample


def _accuracy_and_loss(supernet: nn.Module,
                       batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``supernet`` on ``batches`` (called under ``no_grad``)."""
    correct, loss, total = 0, 0.0, 0
    for x, y in batches:
        logits = supernet(x)
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        total += y.numel()
    return correct / total, loss / total


@contextlib.contextmanager
def _measuring(supernet: nn.Module):
    """The supernet in train mode, so batch norm normalises with the batch's statistics as the
    reference measures (with running statistics, removing an edge would also shift every batch norm
    downstream); its running statistics and batch counters are restored afterwards, and so is
    every candidate and edge taken out or projected."""
    norms = [m for m in supernet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
    was_training = supernet.training
    supernet.train()
    try:
        yield
    finally:
        for m, buffers in zip(norms, saved):
            for k, b in m.named_buffers(recurse=False):
                b.copy_(buffers[k])
        for m in supernet.modules():
            if isinstance(m, MixedOp):
                m.removed, m.fixed = frozenset(), None
            elif isinstance(m, MixedInput):
                m.dropped = frozenset()
        supernet.train(was_training)


def _by_label(supernet: nn.Module, kind: type) -> dict[str, list]:
    """Every module of ``kind`` by label (the cells of one type share their labels)."""
    found: dict[str, list] = {}
    for m in supernet.modules():
        if isinstance(m, kind):
            found.setdefault(m.label, []).append(m)
    return found


def _project_operations(supernet: nn.Module, batches: Sequence, sample: dict[str, Any], measure: bool,
                        order: list[str], edges: dict[str, list[MixedOp]]) -> dict[str, Any]:
    """Project every edge onto one operation, edge by edge in ``order``; decided edges stay projected.

    With ``measure``, the operation kept is the one whose removal costs the supernet the most
    accuracy (ties: the highest loss, then the first candidate); otherwise it is ``sample``'s."""
    trace: dict[str, Any] = {}
    for label in order:
        modules = edges[label]
        names = modules[0].names
        scores = {}
        if measure:
            for i, zero in enumerate(modules[0].zero):
                if zero:
                    continue
                for m in modules:
                    m.removed = frozenset({i})
                scores[i] = _accuracy_and_loss(supernet, batches)
            for m in modules:
                m.removed = frozenset()
            if len(scores) > 1:  # an edge with a single non-zero candidate keeps it
                sample[label] = names[min(scores, key=lambda i: (scores[i][0], -scores[i][1], i))]
            trace[label] = {"without": {str(names[i]): {"accuracy": a, "loss": lo} for i, (a, lo) in scores.items()},
                            "kept": str(sample[label])}
        for m in modules:
            m.fixed = names.index(sample[label])
    return trace


def _project_inputs(supernet: nn.Module, batches: Sequence, sample: dict[str, Any], order: list[str],
                    nodes: dict[str, list[MixedInput]]) -> dict[str, Any]:
    """Node by node in ``order``: the ``n_chosen`` incoming edges whose removal (one at a time) costs
    the supernet the most accuracy are kept (ties: the highest loss, then the earlier edge); the
    others stay removed while later nodes are decided."""
    trace: dict[str, Any] = {}
    for label in order:
        modules = nodes[label]
        n, keep = modules[0].n_candidates, modules[0].n_chosen
        scores = {}
        for i in range(n):
            for m in modules:
                m.dropped = frozenset({i})
            scores[i] = _accuracy_and_loss(supernet, batches)
        kept = sorted(sorted(range(n), key=lambda i: (scores[i][0], -scores[i][1], i))[:keep])
        for m in modules:
            m.dropped = frozenset(range(n)) - set(kept)
        sample[label] = kept
        trace[label] = {"without": {str(i): {"accuracy": a, "loss": lo} for i, (a, lo) in scores.items()},
                        "kept": kept}
    return trace


def _shuffled(labels: list[str]) -> list[str]:
    return [labels[i] for i in torch.randperm(len(labels)).tolist()]


@torch.no_grad()
def select_by_perturbation(supernet: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                           sample: dict[str, Any], *, operations: bool = True,
                           topology: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """DARTS-PT's selection (Wang et al., "Rethinking Architecture Selection in Differentiable NAS",
    ICLR 2021, section 4, Algorithms 1 and 2), without its fine-tuning between decisions.

    First the operations: every edge, in a random order (the global torch generator), is projected
    onto one operation: with ``operations``, the one whose removal costs the supernet the most
    accuracy on ``batches`` (the paper shows alpha favours parameter-free operations), otherwise
    ``sample``'s; projected edges run that operation alone. Then, with ``topology``, every node whose
    inputs are edges (``edge_labels``), in a random order, keeps the ``n_chosen`` edges whose removal
    costs the most. The supernet is measured in train mode (batch statistics), and left as it was.
    Returns the new sample and what was measured (the order, and per edge and node the accuracy and
    loss without each candidate).
    """
    edges = _by_label(supernet, MixedOp)
    nodes = {k: v for k, v in _by_label(supernet, MixedInput).items()
             if v[0].edge_labels and v[0].n_candidates > v[0].n_chosen}
    sample = dict(sample)
    trace: dict[str, Any] = {"order": {"edges": _shuffled(list(edges)), "nodes": _shuffled(list(nodes))}}
    with _measuring(supernet):
        projected = _project_operations(supernet, batches, sample, operations, trace["order"]["edges"], edges)
        if operations:
            trace["edges"] = projected
        if topology:
            trace["nodes"] = _project_inputs(supernet, batches, sample, trace["order"]["nodes"], nodes)
    return sample, trace
