"""Health metrics of a search: how decided the alphas are, and the skip connections DARTS collapses on.

They read any relaxation (DARTS's mixed operations, ProxylessNAS's gates) through the choice modules
of :mod:`nni_visplugin.nas.relax`.
"""
from __future__ import annotations

import math
from typing import Any

import torch.nn as nn
import torch.nn.functional as F

from nni_visplugin.nas.relax import input_choices, learnable_candidates, op_choices

__all__ = ["op_alphas", "alpha_entropy", "count_skips", "learnable_kept", "decision", "UNDECIDED_ENTROPY",
           "UNDECIDED", "COLLAPSED"]

# A search whose operations' mean normalised alpha entropy ends at or above this is undecided: its
# strongest operations barely stand out, and the derived cell is close to a random draw. The level
# comes from the search-quality benchmark (BENCHMARKS.md, "Search quality on ground truth").
UNDECIDED_ENTROPY = 0.9
UNDECIDED = "the derived architecture is close to a random draw from the space"
# A derived architecture that keeps no operation with weights where the space offers some: the
# collapse to parameter-free operations DARTS-like searches are known for (and decided alphas do
# not rule out: on the search-quality benchmark, GDAS at a high architecture learning rate decides
# on cells of nothing but none and pooling).
COLLAPSED = "the derived architecture keeps no operation with weights (only none, skip connections and pooling)"


def op_alphas(supernet: nn.Module) -> list[nn.Parameter]:
    """The operation parameters (one per LayerChoice label), without edge-normalisation ones."""
    return [m.alpha for m in op_choices(supernet).values()]


def alpha_entropy(supernet: nn.Module) -> float:
    """Mean entropy of the operations' softmax, divided by its maximum log(n): 1 = uniform, 0 = one-hot."""
    values = []
    for a in op_alphas(supernet):
        p = F.softmax(a.detach().float(), -1)
        values.append(float(-(p * p.clamp_min(1e-12).log()).sum() / math.log(len(p))) if len(p) > 1 else 0.0)
    return sum(values) / len(values) if values else 0.0


def _kept_op_labels(supernet: nn.Module, arch: dict[str, Any]) -> list[str]:
    """The choices of operations the derived ``arch`` keeps: all of them, except the edges of a node
    (an ``InputChoice`` over edges) that the node did not choose."""
    kept: set[str] = set()
    covered: set[str] = set()
    for label, m in input_choices(supernet).items():
        edges = getattr(m, "edge_labels", None)
        if edges:
            covered.update(edges)
            kept.update(edges[i] for i in arch.get(label, []))
    return [label for label in op_choices(supernet) if label in kept or label not in covered]


def count_skips(supernet: nn.Module, arch: dict[str, Any], cell: str = "normal", skip: str = "skip_connect") -> int:
    """Skip connections among the kept edges of the derived ``cell`` cell (all cells if the space
    names none), the quantity DARTS collapses on (DARTS+, Liang et al. 2019)."""
    ops = op_choices(supernet)
    in_cell = {label for label in ops if label.startswith(f"{cell}/")} or set(ops)
    return sum(1 for label in _kept_op_labels(supernet, arch) if label in in_cell and arch.get(label) == skip)


def learnable_kept(supernet: nn.Module, arch: dict[str, Any]) -> tuple[int, int]:
    """``(k, n)``: of the ``n`` operations the derived ``arch`` keeps where the space offers an
    operation with weights, ``k`` have weights."""
    ops, learnable = op_choices(supernet), learnable_candidates(supernet)
    k = n = 0
    for label in _kept_op_labels(supernet, arch):
        if learnable.get(label) and label in arch:
            n += 1
            k += ops[label].names.index(arch[label]) in learnable[label]
    return k, n


def decision(entropy: float, threshold: float = UNDECIDED_ENTROPY,
             learnable: tuple[int, int] | None = None) -> dict[str, Any]:
    """Whether a search ended decided (its final ``alpha_entropy`` below ``threshold``) and, given
    ``learnable`` (:func:`learnable_kept`), whether it collapsed (kept no operation with weights
    where it could have), with the warning either carries (``None`` when neither)."""
    decided = entropy < threshold
    warnings = [] if decided else [f"undecided: the operations' alphas end at a mean normalised entropy of "
                                   f"{entropy:.3f} (1 = uniform; decided below {threshold}); {UNDECIDED}"]
    out = {"alpha_entropy": float(entropy), "decided": decided, "entropy_threshold": threshold}
    if learnable is not None:
        k, n = learnable
        out.update(learnable_ops=k, kept_ops=n, collapsed=n > 0 and k == 0)
        if out["collapsed"]:
            warnings.append(f"collapsed: {COLLAPSED}")
    out["warning"] = "; ".join(warnings) or None
    return out
