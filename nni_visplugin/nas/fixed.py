"""Fixed networks: one architecture of a space built with only its chosen operations."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.utils.registry import DATA_KWARGS, SPACES, factory_parameters

__all__ = ["data_kwargs", "build_fixed_model", "validate_arch", "fixed_kwargs", "count_flops"]


def data_kwargs(splits: Any) -> dict[str, int]:
    c, h, w = splits.input_shape
    return {"in_channels": c, "image_size": max(h, w), "num_classes": splits.num_classes}


def build_fixed_model(space: str, kwargs: dict[str, Any], arch: dict[str, Any]) -> torch.nn.Module:
    """Construct the fixed network of ``arch`` (only the chosen operations are built)."""
    from nni.nas.space import model_context

    validate_arch(space, kwargs, arch)
    with model_context(arch):
        return SPACES.create(space, **kwargs)


def validate_arch(space: str, kwargs: dict[str, Any], arch: dict[str, Any]) -> None:
    """Refuse an architecture that is not a point of the space, naming the first bad label."""
    if not isinstance(arch, dict):
        raise ValueError(f"an architecture must be a JSON object of label -> choice, got {type(arch).__name__}")
    mutables = SPACES.create(space, **kwargs).simplify()
    unknown = sorted(set(arch) - set(mutables))
    if unknown:
        raise ValueError(f"architecture labels {unknown} are not in space {space!r}")
    for label, mutable in mutables.items():
        if label not in arch:
            raise ValueError(f"architecture has no value for {label!r} of space {space!r}")
        error = mutable.check_contains({label: arch[label]})
        if error is not None:
            raise ValueError(f"architecture value {arch[label]!r} for {label!r} is not allowed: {error}")


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, int, int] | list[int]) -> int:
    """FLOPs of one forward pass on one image, as PyTorch's FlopCounterMode counts them.

    That is 2 per multiply-add of convolutions and matrix products; batch norm, activations,
    pooling and additions are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def fixed_kwargs(space: str, kwargs: dict[str, Any], width: int = 0, cells: int = 0, *,
                 strict: bool = True) -> dict[str, Any]:
    """The keyword arguments of a fixed network of ``space``: affine batch norm (a fixed network learns
    its scale and shift, a supernet does not), then resized to ``width`` / ``cells`` where given.

    With ``strict`` a size the space cannot take is refused, naming what it takes; without, it is ignored.
    """
    accepted = factory_parameters(SPACES.get(space))
    out = dict(kwargs)
    if "affine" in accepted:
        out["affine"] = True
    for value, key, flag in ((width, "width", "--width"), (cells, "num_cells", "--cells")):
        if not value:
            continue
        if key in accepted:
            out[key] = value
        elif strict:
            settable = ", ".join(n for n in accepted if n not in DATA_KWARGS)
            raise ConfigError(f"space {space!r} has no {key!r} argument, so {flag} cannot resize it (it takes {settable})")
    return out
