"""One validator for every typed config: ranges and choices are declared once, beside each field.

A config is a frozen dataclass whose fields are made with :func:`setting`::

    @dataclass(frozen=True)
    class RetrainConfig:
        epochs: int = setting(50, "training epochs", at_least=1)
        lr: float = setting(0.05, "peak learning rate of SGD", above=0)
        augment: str = setting("auto", "augmentation", choices=("auto", "none", "crop"))

        def __post_init__(self):
            validate(self)          # types, ranges, choices of every field; then cross-field rules

:func:`validate` checks each value against its declared type and bounds and raises
:class:`~nni_visplugin.utils.errors.ConfigError` naming the field, what it accepts and what it got.
:func:`add_arguments` turns the same fields into command-line flags (help and default shown), so a
flag and its field cannot drift apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Iterable

from nni_visplugin.utils.errors import ConfigError, ConfigTypeError

__all__ = ["setting", "validate", "accepts", "add_arguments", "from_namespace", "field_kind"]


def setting(default: Any, help: str = "", *, at_least: float | None = None, above: float | None = None,
            at_most: float | None = None, below: float | None = None, choices: Iterable[Any] | None = None,
            flag: bool = True) -> Any:
    """A dataclass field with its help text and the values it accepts.

    Parameters
    ----------
    default
        The default value (a tuple for sequences: the configs are frozen).
    help
        One line for ``--help`` and error messages.
    at_least, above, at_most, below
        Inclusive (``at_least``, ``at_most``) and exclusive (``above``, ``below``) bounds of a number.
    choices
        The only values accepted.
    flag
        Whether :func:`add_arguments` makes a command-line flag of it.
    """
    meta = {"help": help, "at_least": at_least, "above": above, "at_most": at_most, "below": below,
            "choices": tuple(choices) if choices is not None else None, "flag": flag}
    return dataclasses.field(default=default, metadata={"nni_visplugin": meta})


def _meta(f: dataclasses.Field) -> dict[str, Any]:
    return f.metadata.get("nni_visplugin", {})


def field_kind(f: dataclasses.Field) -> tuple[str, bool]:
    """The field's base type name (``int``, ``float``, ``str``, ``bool``, ``tuple``, ``any``) and whether None is allowed."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    base = next((p for p in parts if p != "None"), "any")
    for name in ("int", "float", "str", "bool"):
        if base == name:
            return name, optional
    if base.startswith(("tuple", "list")):
        return "tuple", optional
    return "any", optional


def accepts(f: dataclasses.Field) -> str:
    """What the field accepts, in words: ``an integer >= 1``, ``a number in [0, 1)``, ``one of a, b``."""
    meta = _meta(f)
    kind, optional = field_kind(f)
    if meta.get("choices"):
        names = [str(c) for c in meta["choices"]]
        text = " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)
    else:
        text = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                "tuple": "a list", "any": "a value"}[kind]
        low = (">=", meta["at_least"]) if meta.get("at_least") is not None else \
            (">", meta["above"]) if meta.get("above") is not None else None
        high = ("<=", meta["at_most"]) if meta.get("at_most") is not None else \
            ("<", meta["below"]) if meta.get("below") is not None else None
        if low and high:
            text += f" in {'[' if low[0] == '>=' else '('}{low[1]:g}, {high[1]:g}{']' if high[0] == '<=' else ')'}"
        elif low:
            text += f" {low[0]} {low[1]:g}"
        elif high:
            text += f" {high[0]} {high[1]:g}"
    return text + (" (or null)" if optional else "")


def _check_type(name: str, value: Any, kind: str) -> Any:
    """``value`` as the field's type: NNI sends 4.0 for an integer, lists arrive for tuples."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigTypeError(f"{name} must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value != int(value):
            raise ConfigTypeError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigTypeError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigTypeError(f"{name} must be a string, got {value!r}")
        return value
    if kind == "tuple":
        if not isinstance(value, (tuple, list)):
            raise ConfigTypeError(f"{name} must be a list, got {value!r}")
        return tuple(value)
    return value


def _check_bounds(name: str, value: Any, f: dataclasses.Field) -> None:
    meta = _meta(f)
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"{name} must be {accepts(f)}, got {value!r}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    bad = ((meta.get("at_least") is not None and value < meta["at_least"])
           or (meta.get("above") is not None and value <= meta["above"])
           or (meta.get("at_most") is not None and value > meta["at_most"])
           or (meta.get("below") is not None and value >= meta["below"]))
    if bad:
        raise ConfigError(f"{name} must be {accepts(f)}, got {value!r}")


def validate(config: Any, prefix: str = "") -> None:
    """Check (and coerce in place: ``4.0`` -> ``4``, lists -> tuples) every field of a frozen dataclass.

    Raises :class:`ConfigError` (:class:`ConfigTypeError` for a wrong type) naming ``prefix + field``.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind, optional = field_kind(f)
        name = prefix + f.name
        if value is None:
            if optional or kind == "any":
                continue
            raise ConfigTypeError(f"{name} must be {accepts(f)}, got null")
        if kind != "any" or _meta(f):
            value = _check_type(name, value, kind)
            object.__setattr__(config, f.name, value)
        _check_bounds(name, value, f)


def _flag_type(kind: str):
    if kind == "int":
        return int
    if kind == "float":
        return float
    return str


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = (),
                  defaults: dict[str, Any] | None = None) -> None:
    """A ``--flag`` per field of ``cls`` declared with ``setting(..., flag=True)``: the field's help,
    its accepted values and default. Booleans that default to false become ``--flag`` switches.

    ``defaults`` replaces a field's default on the command line (say, a required argument's
    placeholder); the flag's value still passes :func:`validate` when the config is built.
    """
    skip = set(skip)
    for f in dataclasses.fields(cls):
        meta = _meta(f)
        if f.name in skip or not meta or not meta.get("flag", True):
            continue
        kind, _ = field_kind(f)
        default = (defaults or {}).get(f.name, f.default)
        opt = "--" + f.name.replace("_", "-")
        help_text = meta.get("help") or f.name
        if kind == "bool":
            if default is not False:
                raise TypeError(f"{cls.__name__}.{f.name}: a switch must default to false; add its flag by hand")
            parser.add_argument(opt, dest=f.name, action="store_true", help=help_text)
            continue
        if not meta.get("choices") and kind != "str":
            help_text += "; " + accepts(f).removesuffix(" (or null)")
        if "(default:" not in help_text and default is not None:
            help_text += f" (default: {default})"
        parser.add_argument(opt, dest=f.name, type=_flag_type(kind), default=default,
                            choices=meta.get("choices"), metavar=None if meta.get("choices") else f.name.upper(),
                            help=help_text.replace("%", "%%"))


def from_namespace(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """Build ``cls`` from the flags :func:`add_arguments` made (plus ``extra``); it validates itself."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **extra})
