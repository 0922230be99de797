"""The settings of one retraining (``nni-visplugin retrain`` and the pipeline's ``retrain`` part)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nni_visplugin.data.datasets import DATASETS
from nni_visplugin.utils.errors import ConfigError

__all__ = ["RetrainConfig", "AUGMENTS"]


AUGMENTS = ("auto", "none", "crop", "crop-flip")


@dataclass(frozen=True)
class RetrainConfig:
    """Everything one retraining needs; validated when created."""

    arch: str  # a search's arch.json, or the directory holding it
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 50
    seed: int = 0
    width: int = 0  # 0 = the width the search measured (its result.json's space_kwargs)
    cells: int = 0  # 0 = the number of cells the search measured
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    warmup_epochs: int = 0
    augment: str = "auto"
    erase: float = 0.0  # random erasing probability (0: off)
    holdout_val: bool = False  # train on train only and report val accuracy per epoch
    max_train_samples: int = 0  # 0 = all; a stratified subset of the training split, for quick checks
    image_size: int = 32  # imagefolder only
    threads: int = 0  # 0 = PyTorch's default
    device: str = "auto"
    latency_rounds: int = 3
    progress: bool = True
    resume: bool = True  # continue from the output directory's checkpoints of a run cut short

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        for key in ("epochs", "batch_size", "latency_rounds", "image_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("seed", "width", "cells", "warmup_epochs", "max_train_samples", "threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ConfigError(f"warmup_epochs must be smaller than epochs ({self.epochs}), got {self.warmup_epochs}")
        for key in ("lr", "grad_clip"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ConfigError(f"momentum must be in [0, 1) and weight_decay >= 0, got {self.momentum}, {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.erase <= 1:
            raise ConfigError(f"erase is a probability in [0, 1], got {self.erase}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def recipe(self) -> dict[str, Any]:
        keys = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "label_smoothing", "grad_clip",
                "warmup_epochs", "augment", "erase", "holdout_val", "max_train_samples")
        return {"optimizer": "SGD nesterov", "schedule": "cosine" + (" after linear warm-up" if self.warmup_epochs else ""),
                **{k: getattr(self, k) for k in keys}}
