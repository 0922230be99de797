"""Hand-made search output directories (arch.json + result.json) to retrain without searching."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nni_visplugin.utils.registry import SPACES

from helpers.spaces import tiny_kwargs


def fake_search_dir(directory: Path, space: str = "darts_cell", in_channels: int = 1, seed: int = 0) -> Path:
    """What run_search leaves for ``retrain``: a random architecture of a tiny ``space`` on digits.

    ``none`` edges are replaced by a convolution so the network has something to learn.
    """
    kwargs = tiny_kwargs(space, in_channels=in_channels, num_classes=10)
    arch: dict = {}
    SPACES.create(space, **kwargs).random(memo=arch, random_state=np.random.RandomState(seed))
    arch = {k: ("sep_conv_3x3" if v == "none" else v) for k, v in arch.items()}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "arch.json").write_text(json.dumps(arch))
    (directory / "result.json").write_text(json.dumps({
        "space": space, "space_kwargs": kwargs, "search_space_kwargs": kwargs,
        "input_shape": [in_channels, 8, 8], "num_classes": 10, "dataset": "digits"}))
    return directory
