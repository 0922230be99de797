"""The dense convolutions that ``darts_cell`` can add to the paper's eight candidates."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice

from nni_visplugin import create_space, create_strategy
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.fixed import build_fixed_model
from helpers.spaces import tiny_kwargs  # noqa: E402  (tests/spaces_helpers.py)

PAPER = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
         "dil_conv_3x3", "dil_conv_5x5"]


def _candidates(space) -> set[str]:
    return {name for m in space.modules() if isinstance(m, LayerChoice) for name in m.names}


def test_default_space_keeps_the_papers_eight():
    from nni_visplugin.spaces.darts_cell import EXTRA_PRIMITIVES, PRIMITIVES

    assert list(PRIMITIVES) == PAPER
    assert set(EXTRA_PRIMITIVES) == {"conv_3x3", "conv_1x1"}
    assert _candidates(create_space("darts_cell", **tiny_kwargs("darts_cell"))) == set(PAPER)


@pytest.mark.parametrize("name, kernel", [("conv_3x3", 3), ("conv_1x1", 1)])
@pytest.mark.parametrize("stride", [1, 2])
def test_dense_convolution_shapes_and_width_change(name, kernel, stride):
    from nni_visplugin.spaces.ops import make_op

    op = make_op(name, 8, stride, affine=True)
    convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].groups == 1 and convs[0].kernel_size == (kernel, kernel)
    assert convs[0].weight.shape == (8, 8, kernel, kernel)
    out = op(torch.randn(2, 8, 9, 9))
    assert out.shape == (2, 8, 9 if stride == 1 else 5, 9 if stride == 1 else 5)
    # PC-DARTS rebuilds every candidate on a share of the channels
    narrow = op.at_width(2)
    assert narrow(torch.randn(2, 2, 9, 9)).shape[1] == 2
    assert [m for m in narrow.modules() if isinstance(m, nn.Conv2d)][0].weight.shape == (2, 2, kernel, kernel)


@pytest.mark.parametrize("primitives, message", [(["conv_5x5"], "conv_5x5"), ([], "unknown"),
                                                  (["conv_3x3", "conv_3x3"], "repeat")])
def test_bad_primitives_are_refused(primitives, message):
    with pytest.raises(ValueError, match=message):
        create_space("darts_cell", **tiny_kwargs("darts_cell"), primitives=primitives)


def test_search_and_fixed_network_with_dense_convolutions(tiny_images):
    """A PC-DARTS search over a mix of paper and dense candidates derives an architecture of that
    mix, and the fixed network of an all-dense choice is built from dense convolutions only."""
    primitives = ["max_pool_3x3", "skip_connect", "sep_conv_3x3", "conv_3x3", "conv_1x1"]
    kwargs = {**tiny_kwargs("darts_cell"), "primitives": primitives}
    x, y = tiny_images
    torch.manual_seed(0)
    space = create_space("darts_cell", **kwargs)
    assert _candidates(space) == set(primitives)
    strategy = create_strategy("darts", epochs=2, partial_channels=2, edge_norm=True)
    out = strategy.search(space, TensorLoader(x[:24], y[:24], 12), TensorLoader(x[24:], y[24:], 12))
    ops = {v for k, v in out.arch.items() if "/op_" in k}
    assert ops and ops <= set(primitives)
    # the first alphas of a dense candidate moved with training (it takes part in the search)
    first, last = out.history[0]["alphas"], out.history[-1]["alphas"]
    assert first != last

    dense = {k: ("conv_3x3" if "/op_" in k else v) for k, v in out.arch.items()}
    model = build_fixed_model("darts_cell", {**kwargs, "affine": True}, dense)
    cell_convs = [m for m in model.cells.modules() if isinstance(m, nn.Conv2d)]
    assert cell_convs and all(m.groups == 1 for m in cell_convs)
    assert any(m.kernel_size == (3, 3) for m in cell_convs)
    assert model(x[:4]).shape == (4, kwargs["num_classes"])
