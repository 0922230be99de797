"""Health metrics of a search: how decided the alphas are, and the skip connections DARTS collapses on.

They read any relaxation (DARTS's mixed operations, ProxylessNAS's gates) through the choice modules
of :mod:`nni_visplugin.nas.relax`.
"""
from __future__ import annotations

import math
from typing import Any

import torch.nn as nn
import torch.nn.functional as F

from nni_visplugin.nas.relax import input_choices, op_choices

__all__ = ["op_alphas", "alpha_entropy", "count_skips", "decision", "UNDECIDED_ENTROPY", "UNDECIDED"]

# A search whose operations' mean normalised alpha entropy ends at or above this is undecided: its
# strongest operations barely stand out, and the derived cell is close to a random draw. The level
# comes from the search-quality benchmark (BENCHMARKS.md, "Search quality on ground truth").
UNDECIDED_ENTROPY = 0.9
UNDECIDED = "the derived architecture is close to a random draw from the space"


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


def count_skips(supernet: nn.Module, arch: dict[str, Any], cell: str = "normal", skip: str = "skip_connect") -> int:
    """Skip connections among the kept edges of the derived ``cell`` cell (all cells if the space
    names none), the quantity DARTS collapses on (DARTS+, Liang et al. 2019)."""
    ops = op_choices(supernet)
    in_cell = [label for label in ops if label.startswith(f"{cell}/")] or list(ops)
    kept: set[str] = set()
    covered: set[str] = set()
    for label, m in input_choices(supernet).items():
        edges = getattr(m, "edge_labels", None)
        if edges:
            covered.update(edges)
            kept.update(edges[i] for i in arch.get(label, []))
    return sum(1 for label in in_cell if arch.get(label) == skip and (label in kept or label not in covered))


def decision(entropy: float, threshold: float = UNDECIDED_ENTROPY) -> dict[str, Any]:
    """Whether a search ended decided: its final ``alpha_entropy`` against ``threshold``, with the
    warning an undecided one carries (``None`` when decided)."""
    decided = entropy < threshold
    warning = None if decided else (f"undecided search: the operations' alphas end at a mean normalised entropy of "
                                    f"{entropy:.3f} (1 = uniform; decided below {threshold}); {UNDECIDED}")
    return {"alpha_entropy": float(entropy), "decided": decided, "entropy_threshold": threshold, "warning": warning}
