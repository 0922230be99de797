"""The device a run asks for (``auto``, ``cpu``, ``cuda``, ``cuda:N``), resolved once."""
from __future__ import annotations

import torch

from nni_visplugin.utils.errors import ConfigError

__all__ = ["resolve_device", "valid_device", "DEVICES_HELP"]

DEVICES_HELP = "auto, cpu, cuda or cuda:N"


def valid_device(name: str) -> bool:
    """Whether ``name`` is a device setting this package accepts (whether it exists is checked later)."""
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA where there is one, else the CPU; a CUDA device that is not there is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)
