"""The DARTS cell space (Liu, Simonyan, Yang: "DARTS: Differentiable Architecture Search", ICLR 2019).

A stack of normal and reduction cells. Each cell has two input states (the outputs of the two
previous cells) and ``num_nodes`` intermediate nodes; node ``i`` may take its inputs from the two
cell inputs and every earlier node, and keeps two of them (an ``InputChoice``). Every candidate
edge is a ``LayerChoice`` over the eight DARTS primitives (or the ``primitives`` given, which may
add the dense ``conv_3x3`` and ``conv_1x1`` of NAS-Bench-201). All normal cells share one set of
choices, all reduction cells another, as in the paper. The cell output concatenates the nodes.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from nni.mutable import label_scope
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace
from nni.nas.nn.pytorch.choice import ChosenInputs

from nni_visplugin.utils.registry import register_space

from .ops import ALL_PRIMITIVES, DARTS_PRIMITIVES
from .ops import EXTRA_PRIMITIVES as _EXTRA_OPS  # re-exported below as a tuple
from .ops import FactorizedReduce, ReLUConvBN, make_op

__all__ = ["DartsCellSpace", "EXTRA_PRIMITIVES", "PRIMITIVES"]

PRIMITIVES = tuple(DARTS_PRIMITIVES)
EXTRA_PRIMITIVES = tuple(_EXTRA_OPS)


class _Node(nn.Module):
    """One intermediate node: an edge per candidate input, and the choice of two of them."""

    def __init__(self, index: int, n_inputs: int, c: int, reduction: bool, primitives: tuple[str, ...], affine: bool):
        super().__init__()
        self.inputs = InputChoice(n_inputs, n_chosen=2, reduction="sum", label=f"input_{index}")
        # Under a frozen context the choice above is already resolved: build only the chosen edges.
        chosen = set(self.inputs.chosen) if isinstance(self.inputs, ChosenInputs) else set(range(n_inputs))
        edges = {}
        for j in sorted(chosen):
            stride = 2 if reduction and j < 2 else 1
            edges[str(j)] = LayerChoice(
                {name: make_op(name, c, stride, affine) for name in primitives},
                label=f"op_{index}_{j}",
            )
        self.edges = nn.ModuleDict(edges)
        if not isinstance(self.inputs, ChosenInputs):
            # Read by the strategies: candidate j of `inputs` is the output of the LayerChoice labelled
            # edge_labels[j], so edges are ranked by their operations' weights (paper, section 2.4).
            self.inputs.edge_labels = [self.edges[str(j)].label for j in range(n_inputs)]

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        if isinstance(self.inputs, ChosenInputs):
            # Fixed architecture: compute only the kept edges.
            return sum(self.edges[str(j)](states[j]) for j in self.inputs.chosen)
        return self.inputs([self.edges[str(j)](s) for j, s in enumerate(states)])


class _Cell(nn.Module):
    def __init__(self, num_nodes: int, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool,
                 primitives: tuple[str, ...], affine: bool):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c, affine) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, affine)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0, affine)
        with label_scope("reduce" if reduction else "normal"):
            self.nodes = nn.ModuleList(
                _Node(i, i + 2, c, reduction, primitives, affine) for i in range(num_nodes)
            )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for node in self.nodes:
            states.append(node(states))
        return torch.cat(states[2:], dim=1)


@register_space("darts_cell")
class DartsCellSpace(ModelSpace):
    """DARTS cell space.

    Parameters
    ----------
    in_channels, image_size, num_classes
        Set from the dataset by the search runner.
    width
        Channels per node in the first cells (``C`` in the paper); doubled at every reduction cell.
    num_cells
        Cells in the stack; reduction cells sit at 1/3 and 2/3 of the depth (never first).
    num_nodes
        Intermediate nodes per cell.
    stem_multiplier
        The stem outputs ``stem_multiplier * width`` channels.
    stem_stride
        1 or 2. With 2 the stem convolution halves the image, so the cells see a quarter of the
        pixels and cost about a quarter of the compute (as the ImageNet stems of DARTS do); worth it
        for 28x28 images on a CPU.
    primitives
        Candidate operations per edge: any of :data:`PRIMITIVES` (the paper's eight, the default)
        and the dense convolutions of :data:`EXTRA_PRIMITIVES`.
    affine
        Learnable batch-norm scale and shift; off during search (paper, appendix A.1.1).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: int = 16,
                 num_cells: int = 8, num_nodes: int = 4, stem_multiplier: int = 3, stem_stride: int = 1,
                 primitives: tuple[str, ...] | list[str] = PRIMITIVES, affine: bool = False):
        super().__init__()
        primitives = tuple(primitives)
        unknown = [p for p in primitives if p not in ALL_PRIMITIVES]
        if unknown or not primitives:
            raise ValueError(f"unknown primitive(s) {unknown} for darts_cell; known: {', '.join(ALL_PRIMITIVES)}")
        if len(set(primitives)) != len(primitives):
            raise ValueError(f"darts_cell: primitives repeat an operation: {list(primitives)}")
        for name, value, low in (("in_channels", in_channels, 1), ("image_size", image_size, 1),
                                 ("num_classes", num_classes, 2), ("width", width, 2), ("num_cells", num_cells, 1),
                                 ("num_nodes", num_nodes, 1), ("stem_multiplier", stem_multiplier, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"darts_cell: {name} must be an integer >= {low}, got {value!r}")
        if width % 2:
            raise ValueError(f"darts_cell: width must be even (reduction halves it into two branches), got {width}")
        if stem_stride not in (1, 2):
            raise ValueError(f"darts_cell: stem_stride must be 1 or 2, got {stem_stride!r}")

        # Large images first go through stride-2 stem convolutions down to at most 32 pixels.
        stem_downsamples = max(0, math.ceil(math.log2(image_size / 32))) if image_size > 32 else 0
        c_stem = stem_multiplier * width
        stem: list[nn.Module] = []
        c_in = in_channels
        for _ in range(stem_downsamples):
            stem += [nn.Conv2d(c_in, c_stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_stem), nn.ReLU()]
            c_in = c_stem
        stem += [nn.Conv2d(c_in, c_stem, 3, stride=stem_stride, padding=1, bias=False), nn.BatchNorm2d(c_stem)]
        self.stem = nn.Sequential(*stem)

        # The paper's positions (1/3 and 2/3 of the depth); the first cell always stays a normal one,
        # so even a 2-cell stack has both cell types.
        reduction_at = {num_cells // 3, 2 * num_cells // 3} - {0}
        c_pp, c_p, c = c_stem, c_stem, width
        reduction_prev = False
        cells = []
        for i in range(num_cells):
            reduction = i in reduction_at
            if reduction:
                c *= 2
            cells.append(_Cell(num_nodes, c_pp, c_p, c, reduction, reduction_prev, primitives, affine))
            reduction_prev = reduction
            c_pp, c_p = c_p, num_nodes * c
        self.cells = nn.ModuleList(cells)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.pool(s1).flatten(1))
