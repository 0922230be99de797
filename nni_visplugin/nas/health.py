"""Health metrics of a search: how decided the alphas are, and the skip connections DARTS collapses on."""
from __future__ import annotations

import math
from typing import Any

import torch.nn as nn
import torch.nn.functional as F

from nni_visplugin.nas.relax import mixed_modules

__all__ = ["op_alphas", "alpha_entropy", "count_skips"]


def op_alphas(supernet: nn.Module) -> list[nn.Parameter]:
    """The operation parameters (one per LayerChoice label), without edge-normalisation ones."""
    ops, _ = mixed_modules(supernet)
    return [op.alpha for op in ops.values()]


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
    ops, inputs = mixed_modules(supernet)
    in_cell = [label for label in ops if label.startswith(f"{cell}/")] or list(ops)
    kept: set[str] = set()
    covered: set[str] = set()
    for label, m in inputs.items():
        if m.edge_labels:
            covered.update(m.edge_labels)
            kept.update(m.edge_labels[i] for i in arch.get(label, []))
    return sum(1 for label in in_cell if arch.get(label) == skip and (label in kept or label not in covered))
