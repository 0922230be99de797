"""Tiny instances of registered spaces, so contract tests stay fast on 2 CPU cores."""
from __future__ import annotations

from nni_visplugin import create_space
from nni_visplugin.utils.registry import SPACES, factory_parameters

# Smallest sensible settings for known arguments; spaces from other packages get their defaults.
TINY = {"width": 4, "num_cells": 2, "num_nodes": 2, "widths": [4, 8], "depths": [1, 2], "stem_width": 4, "head_width": 16}


def tiny_kwargs(name: str, in_channels: int = 1, image_size: int = 8, num_classes: int = 3) -> dict:
    accepted = factory_parameters(SPACES.get(name))
    kwargs = {k: v for k, v in TINY.items() if k in accepted}
    return {**kwargs, "in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}


def tiny_space(name: str, **data):
    return create_space(name, **tiny_kwargs(name, **data))
