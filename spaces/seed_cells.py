"""A two-cell space small enough to read in one sitting and to check a strategy by hand.

Each cell chooses one operation among a 3x3 convolution, a 3x3 max-pool and a 3x3 average-pool.
All three keep the cell's shape (``width`` channels, same resolution), so they can be mixed; the
architecture weights of a cell are one vector normalised over its three candidates.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice, ModelSpace

from nni_visplugin.utils.registry import register_space

__all__ = ["SeedCellsSpace"]


def _candidates(width: int) -> dict[str, nn.Module]:
    return {
        "conv_3x3": nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()),
        "max_pool_3x3": nn.MaxPool2d(3, stride=1, padding=1),
        "avg_pool_3x3": nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    }


@register_space("seed_cells")
class SeedCellsSpace(ModelSpace):
    """Stem -> cell 0 -> 2x downsample -> cell 1 -> classifier."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: int = 16):
        super().__init__()
        if width < 1 or in_channels < 1 or num_classes < 2 or image_size < 1:
            raise ValueError("seed_cells: width, in_channels, image_size must be >= 1 and num_classes >= 2")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.cell0 = LayerChoice(_candidates(width), label="cell0")
        # Fixed downsampling between the cells keeps every candidate shape-preserving.
        self.down = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.cell1 = LayerChoice(_candidates(width), label="cell1")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cell1(self.down(self.cell0(self.stem(x)))))
