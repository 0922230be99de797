"""A cell space in the style of NAS-Bench-201 (Dong and Yang, "NAS-Bench-201: Extending the Scope of
Reproducible Neural Architecture Search", ICLR 2020), for measuring search quality on ground truth.

The cell is a small complete graph: four nodes, node 0 its input and node 3 its output, and an edge
from every node to every later one (six edges). Node ``i`` is the sum of its incoming edges, and each
edge is a ``LayerChoice`` over five operations: ``none`` (the edge is cut), ``skip_connect``,
``conv_1x1``, ``conv_3x3`` (ReLU, convolution, batch norm) and ``avg_pool_3x3``. There is no
``InputChoice``: the topology is chosen through ``none``, so ``none`` is a candidate like the others
and can be derived (the ``darts_cell`` space, whose nodes choose their inputs, never derives it).
Architectures differ widely in accuracy (a cell whose output is cut learns nothing), which is what
a benchmark of search quality needs.

The macro skeleton is NAS-Bench-201's: a 3x3 stem convolution, three stages of ``cells_per_stage``
cells at ``width``, ``2 * width`` and ``4 * width`` channels, a residual block with stride 2 between
stages, then batch norm, ReLU, global pooling and a linear classifier. Every cell shares one set of
six choices, as in NAS-Bench-201, so the space holds 5^6 = 15,625 architectures.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice, ModelSpace

from nni_visplugin.utils.registry import register_space

from .ops import ReLUConvBN, make_op

__all__ = ["NB201CellSpace", "NB201_OPERATIONS", "NB201_EDGES"]

NB201_OPERATIONS = ("none", "skip_connect", "conv_1x1", "conv_3x3", "avg_pool_3x3")
# (to, from) of the six edges, in the order NAS-Bench-201 writes its architecture strings.
NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


class CutEdge(nn.Module):
    """The ``none`` operation of this space: the edge contributes zeros. Not flagged ``is_zero``
    (unlike :class:`~nni_visplugin.spaces.ops.Zero`), so strategies mix it and may choose it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class AvgPool(nn.AvgPool2d):
    """NAS-Bench-201's pooling edge: a 3x3 average pool, no batch norm."""

    def __init__(self) -> None:
        super().__init__(3, stride=1, padding=1, count_include_pad=False)


def _with_width(factory, width: int) -> nn.Module:
    op = factory()
    op.at_width = functools.partial(_with_width, factory)  # partial channels rebuild it (PC-DARTS)
    return op


def _operation(name: str, c: int, affine: bool) -> nn.Module:
    if name == "none":
        return _with_width(CutEdge, c)
    if name == "avg_pool_3x3":
        return _with_width(AvgPool, c)
    return make_op(name, c, 1, affine)


class _Cell(nn.Module):
    def __init__(self, c: int, affine: bool):
        super().__init__()
        self.edges = nn.ModuleDict({
            f"{i}_{j}": LayerChoice({name: _operation(name, c, affine) for name in NB201_OPERATIONS},
                                    label=f"edge_{i}_{j}")
            for i, j in NB201_EDGES
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, 4):
            nodes.append(sum(self.edges[f"{i}_{j}"](nodes[j]) for j in range(i)))
        return nodes[3]


class _ResidualReduction(nn.Module):
    """NAS-Bench-201's block between stages: two 3x3 convolutions (the first with stride 2) plus an
    average-pooled, 1x1-projected shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1, True)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1, True)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


@register_space("nb201_cell")
class NB201CellSpace(ModelSpace):
    """NAS-Bench-201-style cell space.

    Parameters
    ----------
    in_channels, image_size, num_classes
        Set from the dataset by the search runner.
    width
        Channels of the first stage (16 in NAS-Bench-201); doubled at each of the two reductions.
    cells_per_stage
        Cells in each of the three stages (5 in NAS-Bench-201).
    affine
        Learnable batch-norm scale and shift in the cells' operations; off during search.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: int = 16,
                 cells_per_stage: int = 1, affine: bool = False):
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("image_size", image_size, 1),
                                 ("num_classes", num_classes, 2), ("width", width, 1),
                                 ("cells_per_stage", cells_per_stage, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"nb201_cell: {name} must be an integer >= {low}, got {value!r}")
        # Large images first go through stride-2 convolutions down to at most 32 pixels.
        downsamples = max(0, math.ceil(math.log2(image_size / 32))) if image_size > 32 else 0
        stem: list[nn.Module] = []
        c_in = in_channels
        for _ in range(downsamples):
            stem += [nn.Conv2d(c_in, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c_in = width
        stem += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        c = width
        for stage in range(3):
            if stage:
                layers.append(_ResidualReduction(c, 2 * c))
                c *= 2
            layers += [_Cell(c, affine) for _ in range(cells_per_stage)]
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))
