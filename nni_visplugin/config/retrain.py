"""The settings of one retraining (``nni-visplugin retrain`` and the pipeline's ``retrain`` part)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nni_visplugin.config.fields import setting, validate
from nni_visplugin.data.datasets import DATASETS
from nni_visplugin.utils.devices import DEVICES_HELP, valid_device
from nni_visplugin.utils.errors import ConfigError

__all__ = ["RetrainConfig", "AUGMENTS"]

AUGMENTS = ("auto", "none", "crop", "crop-flip")


@dataclass(frozen=True)
class RetrainConfig:
    """Everything one retraining needs; validated when created. Each field is also a flag of
    ``nni-visplugin retrain`` and a key of a pipeline config's ``pipeline.retrain``."""

    arch: str = setting("", "a search's arch.json (result.json must be beside it), or its directory", flag=False)
    dataset: str = setting("digits", "dataset to train and test on", choices=DATASETS)
    data_dir: str | None = setting(None, "dataset directory (default: the dataset's own)")
    epochs: int = setting(50, "training epochs", at_least=1)
    seed: int = setting(0, "seed of the initial weights, batch order and augmentation", at_least=0)
    width: int = setting(0, "the space's width (0: as the search measured it)", at_least=0)
    cells: int = setting(0, "the space's num_cells (0: as the search measured it)", at_least=0)
    batch_size: int = setting(64, "batch size", at_least=1)
    lr: float = setting(0.05, "peak learning rate of SGD", above=0)
    momentum: float = setting(0.9, "Nesterov momentum", at_least=0, below=1)
    weight_decay: float = setting(3e-4, "weight decay", at_least=0)
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy", at_least=0, below=1)
    grad_clip: float = setting(5.0, "gradient clipping norm", above=0)
    warmup_epochs: int = setting(0, "linear learning-rate warm-up epochs before the cosine", at_least=0)
    augment: str = setting("auto", "augmentation (auto: random crop, and horizontal flip except for digits)",
                           choices=AUGMENTS)
    erase: float = setting(0.0, "random erasing probability (Zhong et al. 2020: a rectangle of 2-40% of the image, "
                                "aspect 0.3-3.3, filled with noise); 0: off", at_least=0, at_most=1)
    holdout_val: bool = setting(False, "train on the training split only, report validation accuracy per epoch "
                                       "and do not read the test split (default: train on training + "
                                       "validation, then test once)")
    max_train_samples: int = setting(0, "stratified subset of the training split (0: all)", at_least=0)
    image_size: int = setting(32, "image side, imagefolder only", at_least=1)
    threads: int = setting(0, "CPU threads (0: PyTorch's default)", at_least=0)
    device: str = setting("auto", DEVICES_HELP)
    latency_rounds: int = setting(3, "rounds of the latency measurement at batch 1", at_least=1)
    progress: bool = setting(True, "a progress bar", flag=False)
    resume: bool = setting(True, "continue from the checkpoints a run cut short left in the output directory",
                           flag=False)

    def __post_init__(self) -> None:
        validate(self)
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ConfigError(f"warmup_epochs must be smaller than epochs ({self.epochs}), got {self.warmup_epochs}")
        if not valid_device(self.device):
            raise ConfigError(f"device must be {DEVICES_HELP}, got {self.device!r}")

    def recipe(self) -> dict[str, Any]:
        keys = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "label_smoothing", "grad_clip",
                "warmup_epochs", "augment", "erase", "holdout_val", "max_train_samples")
        return {"optimizer": "SGD nesterov", "schedule": "cosine" + (" after linear warm-up" if self.warmup_epochs else ""),
                **{k: getattr(self, k) for k in keys}}
