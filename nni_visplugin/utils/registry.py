"""Name -> factory registries for search spaces and strategies.

Built-in entries register themselves with :func:`register_space` / :func:`register_strategy`
when their module is imported. Other pip packages add entries through the entry-point groups
``nni_visplugin.spaces`` and ``nni_visplugin.strategies``; each entry point names a factory
(a class or a function) and its entry-point name is the registered name.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import re
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from nni_visplugin.utils.errors import UnknownNameError

_logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

__all__ = ["Registry", "SPACES", "STRATEGIES", "register_space", "register_strategy", "DATA_KWARGS"]

# The keyword arguments every space takes from the data (never from a setting).
DATA_KWARGS = ("in_channels", "image_size", "num_classes")


class Registry:
    """One kind of named factory (spaces or strategies).

    Registering a name twice raises: two plugins silently shadowing each other is the bug
    this registry exists to prevent. Entry points that clash with a registered name are
    skipped with a warning naming both.
    """

    def __init__(self, kind: str, group: str, builtin_module: str):
        self.kind = kind
        self.group = group
        self._builtin_module = builtin_module
        self._factories: dict[str, Callable[..., Any]] = {}
        self._origins: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str, factory: Callable[..., Any] | None = None, *, override: bool = False):
        """Register ``factory`` under ``name``; usable as a decorator when ``factory`` is omitted."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            # Names end up in file names (latency caches): no separators, no leading dot.
            raise ValueError(f"{self.kind} name must match {_NAME.pattern}, got {name!r}")

        def add(fn: F) -> F:
            origin = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
            if name in self._factories and not override and self._origins[name] != origin:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {self._origins[name]}; "
                    f"refusing to shadow it with {origin} (pass override=True to replace it)"
                )
            self._factories[name] = fn
            self._origins[name] = origin
            return fn

        return add(factory) if factory is not None else add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self._builtin_module)
        for ep in entry_points(group=self.group):
            if not _NAME.fullmatch(ep.name):
                warnings.warn(f"entry point {ep.value!r} of group {self.group!r} has an invalid name {ep.name!r} "
                              f"(must match {_NAME.pattern}); it is ignored", stacklevel=2)
                continue
            if ep.name in self._factories:
                warnings.warn(
                    f"entry point {ep.value!r} of group {self.group!r} wants the {self.kind} name "
                    f"{ep.name!r}, already taken by {self._origins[ep.name]}; it is ignored",
                    stacklevel=2,
                )
                continue
            try:
                factory = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the built-ins
                warnings.warn(f"could not load {self.kind} entry point {ep.name}={ep.value}: {exc}", stacklevel=2)
                continue
            self._factories[ep.name] = factory
            self._origins[ep.name] = f"entry point {ep.value}"

    def names(self) -> list[str]:
        self._load()
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def name_of(self, factory: Callable[..., Any]) -> str:
        """The registered name of ``factory`` (a space class, say)."""
        self._load()
        for name, f in self._factories.items():
            if f is factory:
                return name
        raise UnknownNameError(f"{getattr(factory, '__qualname__', factory)!r} is not a registered {self.kind}")

    def create(self, name: str, **kwargs: Any) -> Any:
        factory = self.get(name)
        check_kwargs(factory, kwargs, f"{self.kind} {name!r}")
        return factory(**kwargs)


def factory_parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """Keyword parameters of a factory. NNI model spaces hide their ``__init__`` behind a tracing
    wrapper taking ``*args, **kwargs``; the original is kept in ``_init_wrapped``."""
    target = getattr(factory, "_init_wrapped", None) or factory
    return {n: p for n, p in inspect.signature(target).parameters.items() if n != "self"}


def check_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any], what: str) -> None:
    """Reject keyword arguments the factory does not take, naming the ones it does."""
    params = factory_parameters(factory)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"{what} got unknown argument(s) {', '.join(unknown)}; it takes: {', '.join(accepted)}")


SPACES = Registry("space", "nni_visplugin.spaces", "nni_visplugin.spaces")
STRATEGIES = Registry("strategy", "nni_visplugin.strategies", "nni_visplugin.nas.strategies")


def register_space(name: str, factory: Callable[..., Any] | None = None, *, override: bool = False):
    """Register a search-space factory taking ``in_channels``, ``image_size`` and ``num_classes``."""
    return SPACES.register(name, factory, override=override)


def register_strategy(name: str, factory: Callable[..., Any] | None = None, *, override: bool = False):
    """Register an NNI ``Strategy`` factory."""
    return STRATEGIES.register(name, factory, override=override)
