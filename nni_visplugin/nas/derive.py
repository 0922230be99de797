"""Derivation: from a relaxed supernet to a discrete architecture.

:func:`derive_architecture` is DARTS's rule (section 2.4); the two ``select_*_by_perturbation``
functions are DARTS-PT's selection (Wang et al., ICLR 2021), which measures what the supernet
loses without each candidate instead of reading its alpha.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_visplugin.nas.relax import MixedInput, MixedOp, mixed_modules

__all__ = ["derive_architecture", "select_inputs_by_perturbation", "select_ops_by_perturbation"]


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


@torch.no_grad()
def select_inputs_by_perturbation(supernet: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                                  sample: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose every node's incoming edges by how much the supernet needs them (perturbation).

    The topology selection of DARTS-PT (Wang et al., "Rethinking Architecture Selection in
    Differentiable NAS", ICLR 2021, section 4 and Algorithm 2), without its fine-tuning between
    decisions: node by node, the incoming edge whose removal leaves the supernet's accuracy on
    ``batches`` highest (ties: lowest loss, then the later edge) is removed, again and again until
    ``n_chosen`` edges are left; removed edges stay removed while the later nodes are decided.
    Only ``InputChoice`` nodes whose candidates are edges (``edge_labels``) are decided here; every
    other entry of ``sample`` (the operations, chosen by alpha) is kept. Returns the new sample and
    what was measured: per node, per round, the accuracy and loss without each remaining edge.
    """
    nodes: dict[str, list[MixedInput]] = {}  # every module of a label: the cells of one kind share it
    for m in supernet.modules():
        if isinstance(m, MixedInput) and m.edge_labels and m.n_candidates > m.n_chosen:
            nodes.setdefault(m.label, []).append(m)
    was_training = supernet.training
    supernet.eval()

    def drop(modules: list[MixedInput], edges: frozenset[int]) -> None:
        for m in modules:
            m.dropped = edges

    sample = dict(sample)
    trace: dict[str, Any] = {}
    try:
        for label, modules in nodes.items():
            n, keep = modules[0].n_candidates, modules[0].n_chosen
            dropped: frozenset[int] = frozenset()
            rounds = []
            while n - len(dropped) > keep:
                scores = {}
                for i in range(n):
                    if i not in dropped:
                        drop(modules, dropped | {i})
                        scores[i] = _accuracy_and_loss(supernet, batches)
                removed = max(scores, key=lambda i: (scores[i][0], -scores[i][1], i))
                rounds.append({"without": {str(i): {"accuracy": a, "loss": lo} for i, (a, lo) in scores.items()},
                               "removed": removed})
                dropped = dropped | {removed}
            drop(modules, dropped)
            sample[label] = sorted(set(range(n)) - dropped)
            trace[label] = rounds
    finally:
        for modules in nodes.values():
            drop(modules, frozenset())
        supernet.train(was_training)
    return sample, trace


@torch.no_grad()
def select_ops_by_perturbation(supernet: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                               sample: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose the operation of every kept edge by how much the supernet needs it (perturbation).

    The operation selection of DARTS-PT (Wang et al., ICLR 2021, section 4, Algorithm 1), without
    its fine-tuning between decisions: on each edge the operation whose removal costs the supernet
    the most accuracy on ``batches`` is kept (ties: the highest loss, then the first candidate),
    not the one with the largest alpha, which the paper shows favours parameter-free operations.
    The nodes' inputs are those of ``sample`` (decided before, by alpha or by
    :func:`select_inputs_by_perturbation`), and the edges they leave out stay out while the
    operations are measured; only the edges kept are decided. Returns the new sample and what was
    measured: per edge, the accuracy and loss without each candidate.
    """
    edges: dict[str, list[MixedOp]] = {}
    for m in supernet.modules():
        if isinstance(m, MixedOp):
            edges.setdefault(m.label, []).append(m)
    kept, referenced = set(), set()
    drops: list[tuple[MixedInput, frozenset[int]]] = []
    for m in supernet.modules():
        if isinstance(m, MixedInput) and m.edge_labels:
            chosen = set(sample[m.label])
            referenced.update(m.edge_labels)
            kept.update(e for i, e in enumerate(m.edge_labels) if i in chosen)
            drops.append((m, frozenset(range(m.n_candidates)) - chosen))
    decide = [label for label in edges if label in kept or label not in referenced]
    was_training = supernet.training
    supernet.eval()

    sample = dict(sample)
    trace: dict[str, Any] = {}
    try:
        for m, dropped in drops:
            m.dropped = dropped
        for label in decide:
            modules = edges[label]
            scores = {}
            for i, zero in enumerate(modules[0].zero):
                if zero:
                    continue
                for m in modules:
                    m.removed = frozenset({i})
                scores[i] = _accuracy_and_loss(supernet, batches)
            for m in modules:
                m.removed = frozenset()
            if len(scores) > 1:  # an edge with a single non-zero candidate keeps it
                best = min(scores, key=lambda i: (scores[i][0], -scores[i][1], i))
                sample[label] = modules[0].names[best]
            trace[label] = {"without": {str(modules[0].names[i]): {"accuracy": a, "loss": lo}
                                        for i, (a, lo) in scores.items()},
                            "kept": str(sample[label])}
    finally:
        for m, _ in drops:
            m.dropped = frozenset()
        for modules in edges.values():
            for m in modules:
                m.removed = frozenset()
        supernet.train(was_training)
    return sample, trace
