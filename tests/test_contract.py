"""Every registered space, and every registered strategy on every space, passes the same contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nni.nas.nn.pytorch import InputChoice, LayerChoice

from nni_visplugin import create_strategy, list_spaces, list_strategies
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.fixed import build_fixed_model, validate_arch

from helpers.spaces import tiny_kwargs, tiny_space


def _has_choices(model: torch.nn.Module) -> bool:
    return any(isinstance(m, (LayerChoice, InputChoice)) for m in model.modules())


@pytest.mark.parametrize("name", list_spaces())
@pytest.mark.parametrize("shape", [(1, 8), (3, 28), (3, 224)])
def test_space_builds_forwards_and_freezes(name, shape):
    channels, size = shape
    space = tiny_space(name, in_channels=channels, image_size=size, num_classes=5)
    x = torch.randn(2, channels, size, size)
    assert space(x).shape == (2, 5)
    assert space.simplify(), f"{name} has no choice to search"
    for seed in range(3):
        memo: dict = {}
        space.random(memo=memo, random_state=np.random.RandomState(seed))
        frozen = space.freeze(memo)
        assert not _has_choices(frozen)
        assert frozen(x).shape == (2, 5)
        fixed = build_fixed_model(name, tiny_kwargs(name, channels, size, 5), memo)
        assert not _has_choices(fixed)
        assert fixed(x).shape == (2, 5)
        # Only chosen operations are built: never more parameters than the freeze of the space.
        assert sum(p.numel() for p in fixed.parameters()) <= sum(p.numel() for p in frozen.parameters())


@pytest.mark.parametrize("strategy", list_strategies())
@pytest.mark.parametrize("name", list_spaces())
def test_strategy_searches_and_derives_a_valid_architecture(name, strategy, tiny_images):
    x, y = tiny_images
    torch.manual_seed(0)
    space = tiny_space(name)
    outcome = create_strategy(strategy, epochs=1).search(
        space, TensorLoader(x[:24], y[:24], 12), TensorLoader(x[24:], y[24:], 12), TensorLoader(x, y, 48))
    validate_arch(name, tiny_kwargs(name), outcome.arch)
    model = build_fixed_model(name, tiny_kwargs(name), outcome.arch)
    assert not _has_choices(model)
    assert model(x[:4]).shape == (4, 3)
    assert 0.0 <= outcome.history[-1]["val_accuracy"] <= 1.0


def test_invalid_architecture_is_refused_with_the_label():
    kwargs = tiny_kwargs("seed_cells")
    with pytest.raises(ValueError, match="cell0"):
        validate_arch("seed_cells", kwargs, {"cell0": "transformer", "cell1": "conv_3x3"})
    with pytest.raises(ValueError, match="cell1"):
        validate_arch("seed_cells", kwargs, {"cell0": "conv_3x3"})
    with pytest.raises(ValueError, match="not in space"):
        validate_arch("seed_cells", kwargs, {"cell0": "conv_3x3", "cell1": "conv_3x3", "extra": 1})


@pytest.mark.parametrize("strategy", list_strategies())
def test_unsupported_nni_modules_fail_loudly(strategy):
    """NNI's own Cell-based DARTS space is refused with a message, not searched wrongly."""
    from nni.nas.hub.pytorch import DARTS as NNIDarts

    space = NNIDarts(width=4, num_cells=3, dataset="cifar")
    with pytest.raises(TypeError, match="do not relax"):
        create_strategy(strategy, epochs=1).build_supernet(space)


@pytest.mark.parametrize("strategy", list_strategies())
def test_mutables_no_hook_converts_fail_loudly(strategy):
    """NNI's ``no_default_hook`` semantic: a mutable the relaxation leaves unconverted raises."""
    import nni
    from nni.nas.nn.pytorch import ModelSpace, MutableLinear

    class Dangling(ModelSpace):
        def __init__(self):
            super().__init__()
            self.op = LayerChoice([torch.nn.Identity(), torch.nn.Identity()], label="op")
            self.head = MutableLinear(4, nni.choice("width", [2, 3]))

    with pytest.raises(TypeError, match="dangling mutables"):
        create_strategy(strategy, epochs=1).build_supernet(Dangling())


LIGHTNING_FREE_SCRIPT = """
import sys

import torch
import torch.nn as nn

import nni_visplugin
from nni_visplugin.data.loader import TensorLoader

darts, proxyless = (nni_visplugin.create_strategy(name, epochs=1) for name in ("darts", "proxyless"))

from nni.nas.nn.pytorch import LayerChoice, ModelSpace


class Tiny(ModelSpace):  # not registered: the proxyless search measures no latency table for it
    def __init__(self):
        super().__init__()
        self.op = LayerChoice([nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 3, 1)], label="op")

    def forward(self, x):
        return self.op(x).mean((2, 3))


darts_cell = nni_visplugin.create_space("darts_cell", in_channels=1, image_size=8, num_classes=3, width=4,
                                        num_cells=2, num_nodes=2)
x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 3
for strategy, space in ((darts, darts_cell), (proxyless, Tiny())):
    outcome = strategy.search(space, TensorLoader(x, y, 4), TensorLoader(x, y, 4), TensorLoader(x, y, 8))
    assert outcome.arch and outcome.history[-1]["val_accuracy"] >= 0
print("LOADED", [m for m in ("pytorch_lightning", "lightning") if m in sys.modules])
"""


def test_the_search_path_never_imports_lightning():
    """NNI's one-shot strategies and evaluators import Lightning; the plugin's search needs none of it."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", LIGHTNING_FREE_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout.splitlines()


RUN_SEARCH_SCRIPT = """
import sys, tempfile

from nni_visplugin.config.search import SearchConfig
from nni_visplugin.stages.search import run_search
import nni_visplugin.trial  # the NNI trial's entry point too

config = SearchConfig.create({"epochs": 1, "space.width": 4, "space.num_cells": 2, "space.num_nodes": 2,
                              "final_epochs": 1, "max_train_samples": 60, "num_threads": 1})
run_search(config, tempfile.mkdtemp())  # the space is built before the strategy, as in every trial
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("pytorch_lightning", "lightning")))
"""


def test_a_search_as_the_trial_runs_it_never_imports_lightning():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", RUN_SEARCH_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout.splitlines()
