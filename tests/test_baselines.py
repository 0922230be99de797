"""The baseline architectures of benchmarks/fashion_mnist_baselines.py: points of the searched space."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nni_visplugin.search import validate_arch
from nni_visplugin.spaces.darts_cell import PRIMITIVES
from spaces_helpers import tiny_kwargs  # noqa: E402  (tests/spaces_helpers.py)

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "fashion_mnist_baselines.py"
_spec = importlib.util.spec_from_file_location("fashion_mnist_baselines", _PATH)
baselines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baselines)

DENSE = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "conv_3x3", "conv_1x1"]


@pytest.mark.parametrize("primitives", [None, DENSE])
def test_random_architectures_are_seeded_points_of_the_space_without_none(primitives):
    kwargs = tiny_kwargs("darts_cell", image_size=16) | ({"primitives": primitives} if primitives else {})
    kwargs["num_nodes"] = 4
    archs = [baselines.random_arch("darts_cell", kwargs, seed) for seed in (0, 1, 0)]
    assert archs[0] == archs[2] and archs[0] != archs[1]
    ops = set()
    for arch in archs:
        validate_arch("darts_cell", kwargs, arch)
        ops |= {v for k, v in arch.items() if "/op_" in k}
    assert "none" not in ops and len(ops) >= 3
    assert ops <= set(primitives or PRIMITIVES)


@pytest.mark.parametrize("primitives, conv", [(None, "sep_conv_3x3"), (DENSE, "conv_3x3")])
def test_hand_cell_is_a_chain_with_the_spaces_3x3_convolution(primitives, conv):
    kwargs = tiny_kwargs("darts_cell", image_size=16) | ({"primitives": primitives} if primitives else {})
    kwargs["num_nodes"] = 3
    arch = baselines.hand_arch("darts_cell", kwargs)
    validate_arch("darts_cell", kwargs, arch)
    assert [arch[f"normal/input_{i}"] for i in range(3)] == [[0, 1], [1, 2], [2, 3]]
    assert {arch[f"reduce/input_{i}"][0] for i in range(3)} == {0}
    assert {v for k, v in arch.items() if k.startswith("normal/op_")} == {conv}
    assert {v for k, v in arch.items() if k.startswith("reduce/op_")} == {conv, "max_pool_3x3"}
