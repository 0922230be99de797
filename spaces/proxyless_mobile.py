"""A MobileNetV2-style chain of MBConv blocks (Cai, Zhu, Han: "ProxylessNAS", ICLR 2019).

Stages of inverted-residual blocks; every block chooses its kernel size in {3, 5, 7} and expansion
ratio in {3, 6}; every block but the first of a stage may also be ``zero``, which skips it (the
residual connection carries the input through). The stem and head adapt to the input: large
images are downsampled in the stem, small ones (8x8 digits, 28x28 Fashion-MNIST) keep their
resolution until the stages, and a stage halves the resolution only while it is at least 4 pixels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice, ModelSpace

from nni_visplugin.utils.registry import register_space

from .ops import Zero

__all__ = ["ProxylessMobileSpace", "MBCONV_CHOICES"]

MBCONV_CHOICES = tuple(f"k{k}_e{e}" for k in (3, 5, 7) for e in (3, 6))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (no activation after it)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Residual(nn.Module):
    """``x + block(x)``: with the ``zero`` choice the block is skipped."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _block(c_in: int, c_out: int, stride: int, first: bool, label: str) -> nn.Module:
    candidates: dict[str, nn.Module] = {
        f"k{k}_e{e}": MBConv(c_in, c_out, k, stride, e) for k in (3, 5, 7) for e in (3, 6)
    }
    if first:
        return LayerChoice(candidates, label=label)
    candidates["zero"] = Zero()
    return _Residual(LayerChoice(candidates, label=label))


@register_space("proxyless_mobile")
class ProxylessMobileSpace(ModelSpace):
    """ProxylessNAS mobile space.

    Parameters
    ----------
    in_channels, image_size, num_classes
        Set from the dataset by the search runner.
    widths
        Output channels of each stage.
    depths
        Blocks per stage (the first block of each stage cannot be skipped).
    stem_width, head_width
        Channels of the stem convolution and of the last 1x1 convolution before pooling.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 widths: tuple[int, ...] | list[int] = (16, 24, 40, 80), depths: tuple[int, ...] | list[int] = (2, 3, 3, 3),
                 stem_width: int = 16, head_width: int = 256):
        super().__init__()
        widths, depths = tuple(widths), tuple(depths)
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"proxyless_mobile: widths {widths} and depths {depths} must be non-empty and of equal length")
        if any(int(v) != v or v < 1 for v in widths + depths + (stem_width, head_width, in_channels, image_size)):
            raise ValueError("proxyless_mobile: widths, depths, stem_width, head_width, in_channels and image_size "
                             "must be positive integers")
        if num_classes < 2:
            raise ValueError(f"proxyless_mobile: num_classes must be >= 2, got {num_classes}")

        resolution = image_size
        stem_stride = 1
        while resolution > 32:  # large images: the stem brings them down to at most 32 pixels
            stem_stride *= 2
            resolution = (resolution + 1) // 2
        stem: list[nn.Module] = []
        c = in_channels
        s = stem_stride
        while s > 1:
            stem += [nn.Conv2d(c, stem_width, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU6()]
            c, s = stem_width, s // 2
        stem += [nn.Conv2d(c, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU6(),
                 MBConv(stem_width, stem_width, 3, 1, 1)]  # the fixed first block, as in MobileNetV2
        self.stem = nn.Sequential(*stem)

        blocks: list[nn.Module] = []
        c = stem_width
        for i, (width, depth) in enumerate(zip(widths, depths)):
            stride = 2 if resolution >= 4 else 1
            resolution = (resolution + stride - 1) // stride
            for j in range(depth):
                blocks.append(_block(c, width, stride if j == 0 else 1, j == 0, f"s{i}_b{j}"))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(c, head_width, 1, bias=False), nn.BatchNorm2d(head_width), nn.ReLU6(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head_width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
