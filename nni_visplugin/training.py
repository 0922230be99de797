"""Plain training and evaluation loops shared by the search (final evaluation) and retraining."""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["evaluate", "train_from_scratch", "check_finite"]

_logger = logging.getLogger(__name__)


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Stop at the first non-finite loss: a NaN search must fail, never report a result."""
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"non-finite loss ({loss.item()}) at {where}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("cannot evaluate on an empty split")
    return correct / total


def train_from_scratch(model: nn.Module, loader: Iterable, epochs: int, *, lr: float = 0.05, momentum: float = 0.9,
                       weight_decay: float = 3e-4, label_smoothing: float = 0.0, grad_clip: float = 5.0,
                       device: torch.device | str = "cpu",
                       on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """SGD with momentum and a cosine schedule; returns the mean training loss per epoch."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    losses = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for step, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
            check_finite(loss, f"retraining epoch {epoch} step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            total += loss.item() * y.numel()
            n += y.numel()
        sched.step()
        losses.append(total / max(n, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    if losses and not math.isfinite(losses[-1]):
        raise FloatingPointError("training ended with a non-finite loss")
    return losses
