"""Augmentation on batches of normalised image tensors: random crop, flip, random erasing."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["TensorAugment", "make_augment", "CROP_PADDING", "FLIP_DATASETS"]


# Crop padding by image side: an eighth of the image, as the usual CIFAR (4 of 32) and MNIST (2 of 28) recipes.
CROP_PADDING = {8: 1, 28: 2, 32: 4}


# Mirror images are still images of the same class here; a mirrored digit is not a digit.
FLIP_DATASETS = ("fashion-mnist", "cifar10", "imagefolder")


class TensorAugment:
    """Random crop with padding, horizontal flip and random erasing, on a batch of normalised images.

    The padding is the value of a black pixel after normalisation (``fill``, per channel), as if
    the raw image had been padded. Draws come from its own seeded generator on the CPU, so a run
    is reproducible whatever the device.

    Random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020, algorithm 1), last:
    with probability ``erase`` an image gets one rectangle filled with random values (standard
    normal: the images are normalised). As in the paper's algorithm, a draw is an area ``S_e``
    uniform in [0.02, 0.4] of the image, an aspect ratio ``r_e`` uniform in [0.3, 1/0.3] (height
    ``sqrt(S_e * r_e)``, width ``sqrt(S_e / r_e)``, rounded to pixels) and a top-left corner uniform
    over the image, repeated until the rectangle lies inside the image. Here every image gets
    ``ERASE_TRIES`` draws at once and keeps the first that fits; about 31% of the draws fit on 28x28
    images, so an image is left whole for want of a fitting draw about once in 10^10.
    """

    ERASE_AREA = (0.02, 0.4)
    ERASE_RATIO = 0.3
    ERASE_TRIES = 64

    def __init__(self, padding: int, flip: bool, fill: list[float] | torch.Tensor, seed: int = 0, erase: float = 0.0):
        if not 0.0 <= erase <= 1.0:
            raise ValueError(f"erase is a probability in [0, 1], got {erase}")
        self.padding, self.flip, self.erase = padding, flip, float(erase)
        self.fill = torch.as_tensor(fill, dtype=torch.float32).view(1, -1, 1, 1)
        self._gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.padding:
            p = self.padding
            fill = self.fill.to(x.device, x.dtype)
            padded = F.pad(x - fill, (p, p, p, p)) + fill
            dy = torch.randint(0, 2 * p + 1, (n, 1), generator=self._gen).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n, 1), generator=self._gen).to(x.device)
            rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # n, h, 1
            cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # n, 1, w
            batch = torch.arange(n, device=x.device)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # n, c, h, w
        if self.flip:
            mask = (torch.rand(n, generator=self._gen) < 0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        if self.erase:
            x = torch.where(self.erase_mask(n, h, w).to(x.device)[:, None],
                            torch.randn(x.shape, generator=self._gen).to(x.device, x.dtype), x)
        return x.contiguous()

    def erase_mask(self, n: int, h: int, w: int) -> torch.Tensor:
        """Boolean (n, h, w): the rectangle each image loses (all False for the images spared)."""
        g, k = self._gen, self.ERASE_TRIES
        low, high = self.ERASE_AREA
        area = (low + (high - low) * torch.rand(n, k, generator=g)) * (h * w)
        ratio = self.ERASE_RATIO + (1 / self.ERASE_RATIO - self.ERASE_RATIO) * torch.rand(n, k, generator=g)
        eh = torch.sqrt(area * ratio).round().long()
        ew = torch.sqrt(area / ratio).round().long()
        top = (torch.rand(n, k, generator=g) * h).long()
        left = (torch.rand(n, k, generator=g) * w).long()
        fits = (eh >= 1) & (ew >= 1) & (top + eh <= h) & (left + ew <= w)
        first = fits.long().argmax(1)  # the first draw that fits (0 when none does: masked out below)
        pick = torch.arange(n)
        eh, ew, top, left = eh[pick, first], ew[pick, first], top[pick, first], left[pick, first]
        chosen = fits[pick, first] & (torch.rand(n, generator=g) < self.erase)
        rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # n, h
        in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # n, w
        return chosen[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gen.set_state(state["generator"])

    def describe(self) -> dict[str, Any]:
        return {"crop_padding": self.padding, "horizontal_flip": self.flip, "random_erasing": self.erase}


def make_augment(mode: str, dataset: str, input_shape: tuple[int, int, int], mean: list[float], std: list[float],
                 seed: int, erase: float = 0.0) -> TensorAugment | None:
    """The augmentation ``mode`` (``auto`` picks crop, and flip except for digits) for this data,
    followed by random erasing with probability ``erase``."""
    fill = [-m / s for m, s in zip(mean, std)]  # a black pixel, normalised
    if mode == "none":
        return TensorAugment(0, False, fill, seed, erase) if erase else None
    side = input_shape[1]
    padding = CROP_PADDING.get(side, max(1, side // 8))
    flip = mode == "crop-flip" or (mode == "auto" and dataset in FLIP_DATASETS)
    return TensorAugment(padding, flip, fill, seed, erase)
