"""The one place where settings enter: CLI flags, ``--set key=value`` and NNI hyperparameters are
validated here into a frozen :class:`SearchConfig`; library code never sees a raw dict or Namespace.

Keys of an override mapping:

- a field of :class:`SearchConfig` (``seed``, ``batch_size``, ``final_epochs``, ...);
- ``space.NAME``: a keyword argument of the search space (``space.width=16``);
- any other key: a setting of the strategy (``arch_lr``, ``epochs``, ``order``, ...).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

from nni_visplugin.config.fields import setting, validate
from nni_visplugin.data.datasets import CHANNELS, DATASETS
from nni_visplugin.utils.devices import DEVICES_HELP, valid_device
from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.utils.registry import DATA_KWARGS, SPACES, STRATEGIES, factory_parameters

__all__ = ["SearchConfig", "ConfigError", "parse_assignments"]



def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; values are JSON where they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _coerce(value: Any, like: Any, key: str) -> Any:
    """Coerce ``value`` to the type of the default ``like`` (NNI sends 4.0 for an integer epoch count)."""
    if like is None or value is None:
        return value
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if isinstance(like, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if isinstance(like, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if isinstance(like, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if isinstance(like, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(value)
    return value


def _strategy_defaults(strategy: str) -> dict[str, Any]:

    factory = STRATEGIES.get(strategy)
    config_class = getattr(factory, "config_class", None)
    if config_class is not None and dataclasses.is_dataclass(config_class):
        return {f.name: f.default for f in fields(config_class)}
    return _defaults(factory)


def _defaults(factory: Any) -> dict[str, Any]:

    return {n: (p.default if p.default is not inspect.Parameter.empty else None)
            for n, p in factory_parameters(factory).items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _space_defaults(space: str) -> dict[str, Any]:

    return _defaults(SPACES.get(space))


@dataclass(frozen=True)
class SearchConfig:
    """Everything one search needs. Build with :meth:`create`, which validates every key."""

    space: str = setting("darts_cell", "search space name (nni-visplugin list)")
    strategy: str = setting("darts", "strategy name (nni-visplugin list)")
    dataset: str = setting("digits", "dataset", choices=DATASETS)
    data_dir: str | None = setting(None, "dataset directory (default: the dataset's own)")
    seed: int = setting(0, "seed of the search and of the final training", at_least=0)
    batch_size: int = setting(64, "batch size of the weight and architecture steps", at_least=1)
    val_fraction: float = setting(0.2, "stratified share of the training data held out for validation",
                                  above=0, below=1)
    # A stratified subset keeps searches on big datasets cheap.
    max_train_samples: int = setting(0, "training images used by a search (0: all)", at_least=0)
    image_size: int = setting(32, "image side, imagefolder only", at_least=1)
    download: bool = setting(False, "let torchvision fetch fashion-mnist / cifar10 when missing (needs network)")
    final_epochs: int = setting(10, "epochs of the derived network's training from scratch", at_least=0)
    final_lr: float = setting(0.05, "learning rate of that training", above=0)
    final_width: int = setting(0, "width of the derived network (0: the searched width)", at_least=0)
    final_cells: int = setting(0, "cells of the derived network (0: the searched number)", at_least=0)
    num_threads: int = setting(0, "CPU threads (0: PyTorch's default)", at_least=0)
    device: str = setting("auto", DEVICES_HELP)
    space_kwargs: Mapping[str, Any] = field(default_factory=dict)
    strategy_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "space_kwargs", MappingProxyType(dict(self.space_kwargs)))
        object.__setattr__(self, "strategy_kwargs", MappingProxyType(dict(self.strategy_kwargs)))

    @classmethod
    def create(cls, overrides: Mapping[str, Any] | None = None, base: "SearchConfig | None" = None) -> "SearchConfig":
        """Apply ``overrides`` (see module docstring) to ``base`` and validate the result."""

        base = base or cls()
        top = {f.name: getattr(base, f.name) for f in fields(cls)}
        top["space_kwargs"] = dict(base.space_kwargs)
        top["strategy_kwargs"] = dict(base.strategy_kwargs)
        overrides = dict(overrides or {})
        defaults = {f.name: f.default for f in fields(cls) if f.default is not dataclasses.MISSING}

        # Names first: they decide which nested keys exist.
        for key in ("space", "strategy", "dataset"):
            if key in overrides:
                top[key] = _coerce(overrides.pop(key), "", key)
        try:
            SPACES.get(top["space"])
            STRATEGIES.get(top["strategy"])
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
        if top["dataset"] not in DATASETS:
            raise ConfigError(f"unknown dataset {top['dataset']!r}; known: {', '.join(DATASETS)}")

        space_defaults = _space_defaults(top["space"])
        strategy_defaults = _strategy_defaults(top["strategy"])
        for key, value in overrides.items():
            if key.startswith("space."):
                name = key[len("space."):]
                if name == "in_channels":
                    # Allowed as a statement about the data, which must then agree (see check_in_channels).
                    top["space_kwargs"][name] = _coerce(value, 0, key)
                    continue
                if name in DATA_KWARGS:
                    raise ConfigError(f"{key} is set from the dataset and cannot be overridden")
                if name not in space_defaults:
                    known = ", ".join(f"space.{n}" for n in space_defaults if n not in DATA_KWARGS)
                    raise ConfigError(f"unknown setting {key!r} for space {top['space']!r}; known: {known}")
                top["space_kwargs"][name] = _coerce(value, space_defaults[name], key)
            elif key in defaults and key not in ("space_kwargs", "strategy_kwargs"):
                top[key] = _coerce(value, defaults[key], key) if key != "data_dir" else (None if value is None else str(value))
            elif key in strategy_defaults:
                top["strategy_kwargs"][key] = _coerce(value, strategy_defaults[key], key)
            else:
                known = sorted(set(defaults) - {"space_kwargs", "strategy_kwargs"}) + sorted(strategy_defaults)
                raise ConfigError(f"unknown setting {key!r}; known: {', '.join(known)}, space.<argument>")
        config = cls(**top)
        config._validate()
        return config

    def _validate(self) -> None:
        validate(self)
        if not valid_device(self.device):
            raise ConfigError(f"device must be {DEVICES_HELP}, got {self.device!r}")
        if self.dataset in CHANNELS:
            self.check_in_channels(CHANNELS[self.dataset])
        self._check_space()
        # Build the strategy once so its own validation speaks now, not after the data is loaded.
        try:
            STRATEGIES.create(self.strategy, **self.strategy_kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None

    def _check_space(self) -> None:
        """Build the space once with its settings (at the dataset's channels, a stand-in image size
        and ten classes): a value the space refuses speaks now, as one line. A space at its
        defaults is not built: nothing there to refuse."""
        if not self.space_kwargs:
            return
        accepted = factory_parameters(SPACES.get(self.space))
        data = {"in_channels": CHANNELS.get(self.dataset, 3), "image_size": 32, "num_classes": 10}
        try:
            SPACES.create(self.space, **{**{k: v for k, v in data.items() if k in accepted}, **self.space_kwargs})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"space {self.space} refuses its settings: {exc}") from None

    def check_in_channels(self, channels: int) -> None:
        """Refuse a ``space.in_channels`` setting that differs from the dataset's ``channels``.

        Called with the channels the dataset is known to have when the config is created, and with
        those of the images really read when a search starts.
        """
        wanted = self.space_kwargs.get("in_channels")
        if wanted is None or wanted == channels:
            return
        if wanted < 1:
            raise ConfigError(f"space.in_channels must be >= 1, got {wanted}; remove the setting: "
                              f"dataset {self.dataset} has {channels}-channel images")
        read_as = " (image folders are read as RGB)" if self.dataset == "imagefolder" else ""
        raise ConfigError(f"space.in_channels={wanted} but dataset {self.dataset} has {channels}-channel images"
                          f"{read_as}: remove the setting or use a dataset with {wanted} channel{'s' * (wanted != 1)}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["space_kwargs"] = dict(self.space_kwargs)
        d["strategy_kwargs"] = dict(self.strategy_kwargs)
        return d
