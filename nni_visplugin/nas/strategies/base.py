"""What every bilevel one-shot strategy shares: its settings, its outcome, the split of the data."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import torch
import torch.nn as nn

from nni_visplugin.nas.relax import arch_parameters

__all__ = ["OneShotConfig", "SearchOutcome", "split_params", "split_loader_for_bilevel", "EARLY_STOP_RULES"]


EARLY_STOP_RULES = ("none", "skips", "stable")


@dataclass(frozen=True)
class OneShotConfig:
    """Settings every bilevel one-shot search shares: the weight and architecture optimisers."""

    epochs: int = 50
    weight_lr: float = 0.025
    weight_lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    warmup_epochs: int = 0  # epochs of weight-only training before alpha moves
    # Health monitor: every epoch records the operations' normalised alpha entropy and the skip
    # connections kept in the derived normal cell. early_stop ends the search on a rule of DARTS+
    # (Liang et al. 2019): "skips" once the normal cell keeps early_stop_skips skip connections
    # (criterion 1), "stable" once the ranking of every edge's operations has not changed for
    # early_stop_patience epochs (criterion 2).
    early_stop: str = "none"
    early_stop_skips: int = 2
    early_stop_patience: int = 10

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{f.name} must be an integer, got {value!r}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TypeError(f"{f.name} must be a number, got {value!r}")
            if f.type == "str" and not isinstance(value, str):
                raise TypeError(f"{f.name} must be a string, got {value!r}")
            if f.type == "bool" and not isinstance(value, bool):
                raise TypeError(f"{f.name} must be true or false, got {value!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        for name in ("weight_lr", "arch_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_lr_min", "weight_decay", "arch_weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.weight_lr_min > self.weight_lr:
            raise ValueError(f"weight_lr_min ({self.weight_lr_min}) exceeds weight_lr ({self.weight_lr})")
        for name in ("momentum", "arch_beta1", "arch_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.early_stop not in EARLY_STOP_RULES:
            raise ValueError(f"early_stop must be one of {', '.join(EARLY_STOP_RULES)}, got {self.early_stop!r}")
        if self.early_stop_skips < 1 or self.early_stop_patience < 1:
            raise ValueError("early_stop_skips and early_stop_patience must be >= 1")


@dataclass
class SearchOutcome:
    """What a search returns: plain data plus the trained supernet."""

    arch: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    supernet: nn.Module | None = None
    latency_table: Any = None  # set by strategies that search against a latency lookup table

    @property
    def last_val_accuracy(self) -> float | None:
        return self.history[-1].get("val_accuracy") if self.history else None


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
    from torch.utils.data import DataLoader, random_split

    dataset = loader.dataset
    n = len(dataset)
    if n < 2:
        raise ValueError("the training split needs at least 2 samples to be halved for the bilevel search")
    halves = random_split(dataset, [n // 2, n - n // 2], generator=torch.Generator().manual_seed(seed))
    batch = loader.batch_size or 64
    return tuple(DataLoader(h, batch_size=batch, shuffle=True, drop_last=False,
                            generator=torch.Generator().manual_seed(seed + i)) for i, h in enumerate(halves))
