"""Plain training and evaluation loops shared by the search (final evaluation) and retraining."""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_visplugin.nas.fastconv import fast_depthwise

__all__ = ["evaluate", "train_from_scratch", "check_finite", "memory_format", "to_layout"]

_logger = logging.getLogger(__name__)

# Channels-last (NHWC) tensors let oneDNN run the depthwise and 1x1 convolutions of the searched cells
# faster on CPU (a retraining epoch of a 5-cell darts_cell on Fashion-MNIST: 80 s -> 65 s on 2 threads);
# the arithmetic is the same, only the order of the sums changes. NNI_VISPLUGIN_CHANNELS_LAST=0 turns it off.
_CHANNELS_LAST_ENV = "NNI_VISPLUGIN_CHANNELS_LAST"


def memory_format(device: torch.device | str) -> torch.memory_format:
    """The memory layout for images and convolution weights on ``device``: channels-last on CPU."""
    if os.environ.get(_CHANNELS_LAST_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return torch.contiguous_format
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def to_layout(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``, a 4-D batch of images in :func:`memory_format`'s layout."""
    x = x.to(device)
    return x.contiguous(memory_format=memory_format(device)) if x.dim() == 4 else x


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Stop at the first non-finite loss: a NaN search must fail, never report a result."""
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"non-finite loss ({loss.item()}) at {where}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    model.to(memory_format=memory_format(device))
    correct = total = 0
    for x, y in loader:
        x, y = to_layout(x, device), y.to(device)
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("cannot evaluate on an empty split")
    return correct / total


def train_from_scratch(model: nn.Module, loader: Iterable, epochs: int, *, lr: float = 0.05, momentum: float = 0.9,
                       weight_decay: float = 3e-4, label_smoothing: float = 0.0, grad_clip: float = 5.0,
                       device: torch.device | str = "cpu",
                       on_epoch: Callable[[int, float], None] | None = None, warmup_epochs: int = 0,
                       augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       on_record: Callable[[dict[str, Any]], None] | None = None,
                       resume: dict[str, Any] | None = None,
                       on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None) -> list[float]:
    """SGD with Nesterov momentum and a cosine schedule; returns the mean training loss per epoch
    (of the epochs this call trained).

    ``warmup_epochs`` > 0 ramps the learning rate linearly over those epochs before the cosine
    decay over the rest. ``augment`` transforms every training batch (on ``device``) before the
    forward pass. ``on_record`` receives a dict per epoch: ``epoch``, ``train_loss``,
    ``train_accuracy`` (on the augmented batches, as trained), ``lr`` and ``seconds``.

    ``on_checkpoint(epoch, state)`` is called after each epoch's ``on_record`` with the optimizer's
    and the schedule's state; ``resume`` (``epoch``: the number of epochs done, ``optimizer``,
    ``scheduler``: such a state) continues a run from there. The model's weights and the
    generators of ``loader`` and ``augment`` are the caller's to save and restore.
    """
    if warmup_epochs < 0 or (warmup_epochs and warmup_epochs >= epochs):
        raise ValueError(f"warmup_epochs must be in [0, epochs), got {warmup_epochs} for {epochs} epochs")
    model.to(device, memory_format=memory_format(device)).train()
    with fast_depthwise(model):  # CPU only; the caller gets plain convolutions back
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
        if warmup_epochs:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: _warmup_cosine(e, warmup_epochs, epochs))
        else:
            # Kept as it was before warm-up existed, so the search's final training is unchanged.
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
        start_epoch = 0
        if resume is not None:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            start_epoch = int(resume["epoch"])
        losses = []
        for epoch in range(start_epoch, epochs):
            start = time.perf_counter()
            epoch_lr = opt.param_groups[0]["lr"]
            loss, accuracy = _train_epoch(model, loader, opt, epoch, label_smoothing=label_smoothing,
                                          grad_clip=grad_clip, device=device, augment=augment)
            sched.step()
            losses.append(loss)
            if on_epoch is not None:
                on_epoch(epoch, loss)
            if on_record is not None:
                on_record({"epoch": epoch, "train_loss": loss, "train_accuracy": accuracy, "lr": epoch_lr,
                           "seconds": time.perf_counter() - start})
            if on_checkpoint is not None:
                on_checkpoint(epoch, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
        if losses and not math.isfinite(losses[-1]):
            raise FloatingPointError("training ended with a non-finite loss")
        return losses


def _train_epoch(model: nn.Module, loader: Iterable, opt: torch.optim.Optimizer, epoch: int, *,
                 label_smoothing: float, grad_clip: float, device: torch.device | str,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[float, float]:
    """One pass over ``loader``; the mean loss and the accuracy on the (augmented) batches as trained."""
    total, correct, n = 0.0, 0, 0
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        if augment is not None:
            x = augment(x)
        x = to_layout(x, device)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        check_finite(loss, f"retraining epoch {epoch} step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        total += loss.item() * y.numel()
        correct += (logits.argmax(1) == y).sum().item()
        n += y.numel()
    return total / max(n, 1), correct / max(n, 1)


def _warmup_cosine(epoch: int, warmup: int, epochs: int) -> float:
    """Learning-rate factor: (e + 1) / (warmup + 1) during warm-up, then cosine from 1 towards 0."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))
