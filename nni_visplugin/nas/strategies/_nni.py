"""What the strategies need from NNI 3.0, without the Lightning that NNI's one-shot package imports.

NNI 3.0 keeps its one-shot machinery (``mutate_model``, ``no_default_hook``, ``OneShotStrategy``) in
``nni.nas.oneshot.pytorch``, whose modules import ``pytorch_lightning``; its ``nni.nas.strategy``
package imports that on import, and ``nni.nas.evaluator`` (which ``nni.nas.space`` imports) copies
the Lightning evaluators into itself. The plugin's search needs none of them, so this module:

- imports ``nni.nas.evaluator`` without its Lightning shortcut (``_compat.import_nni_evaluator_without_lightning``);
- loads ``nni/nas/strategy/base.py``, the :class:`Strategy` every NNI strategy subclasses, as the
  module ``nni.nas.strategy.base`` without running its package's ``__init__`` (the package, when
  imported later, finds that module and uses the same class);
- walks a space with mutation hooks as NNI's ``OneShotStrategy.mutate_model`` does;
- lets NNI's ``NasExperiment`` recognise the strategies as one-shot (see :func:`instance_class`).

Both imports do nothing special once Lightning or the NNI module is loaded anyway.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch.nn as nn

from nni_visplugin import _compat

__all__ = ["Strategy", "MutationHook", "mutate_model", "no_default_hook", "instance_class"]

MutationHook = Callable[[nn.Module, str, dict, dict], Any]


def _lightning_loaded() -> bool:
    return "pytorch_lightning" in sys.modules


def _strategy_base_module():
    name = "nni.nas.strategy.base"
    if name in sys.modules or "nni.nas.strategy" in sys.modules or _lightning_loaded():
        return importlib.import_module(name)
    import nni.nas

    spec = importlib.util.spec_from_file_location(name, Path(nni.nas.__file__).parent / "strategy" / "base.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_compat.import_nni_evaluator_without_lightning()
Strategy = _strategy_base_module().Strategy

from nni.mutable import frozen_context  # noqa: E402  (after the evaluator package above)
from nni.nas.nn.pytorch import Cell, ModelSpace, MutableModule  # noqa: E402


def no_default_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]) -> bool:
    """Last hook of every list: any mutable the hooks before it left unconverted raises (NNI's
    ``no_default_hook``), so a space never searches with a choice silently fixed."""
    if isinstance(module, Cell) and module.merge_op != "all":
        raise TypeError(f"Cell with merge_op `{module.merge_op}` is not supported")
    if isinstance(module, MutableModule) and module.mutables:
        raise TypeError(f"Module `{name}` of type `{type(module).__name__}` has dangling mutables and is not "
                        "supported. Please implement its one-shot version and register it into `mutation_hooks`.")
    return True  # suppress all other hooks


def _apply_hooks(module: nn.Module, name: str, hooks: Sequence[MutationHook], memo: dict[str, Any]) -> nn.Module | None:
    """The module the first hook that answers returns (``None``: keep it), as NNI reads a hook's answer:
    a module, ``None``/``False`` (ask the next hook), ``True`` (keep it, ask no other) or a
    ``(module or None, suppress)`` pair."""
    replaced = None
    for hook in hooks:
        answer = hook(module, name, memo, {})
        if isinstance(answer, tuple):
            answer, suppress = answer
        elif answer is True:
            answer, suppress = None, True
        elif not answer:
            answer, suppress = None, False
        elif isinstance(answer, nn.Module):
            suppress = True
        else:
            raise TypeError(f"Mutation hook returned {answer} of unsupported type: {type(answer)}.")
        if answer is not None:
            module = replaced = answer
        if suppress:
            break
    return replaced


def _walk(module: nn.Module, prefix: str, hooks: Sequence[MutationHook], memo: dict[str, Any]) -> None:
    for child_name, child in list(module.named_children()):  # a list: children are replaced on the way
        name = f"{prefix}.{child_name}" if prefix else child_name
        new = _apply_hooks(child, name, hooks, memo)
        if new is not None:
            setattr(module, child_name, new)
            child = new
        _walk(child, name, hooks, memo)  # pre-order: a replacement's own children are visited too


def mutate_model(model: nn.Module, hooks: Sequence[MutationHook], strategy: Any) -> nn.Module:
    """Convert ``model`` into a supernet in place, as ``OneShotStrategy.mutate_model`` does: every
    module under the root, parents first, goes through the space's own ``extra_oneshot_hooks(strategy)``
    and then ``hooks``; one memo is shared by all calls (hooks keep a label's shared parameter
    there); the walk runs in a frozen context, which some mutables need to be created."""
    if not isinstance(model, ModelSpace):
        raise TypeError("The transformed model must be a ModelSpace.")
    extra = list(model.extra_oneshot_hooks(strategy)) if hasattr(model, "extra_oneshot_hooks") else []
    with frozen_context():
        _walk(model, "", extra + list(hooks), {})
    return model


@functools.lru_cache(maxsize=None)
def _recognised_by_nas_experiment(cls: type) -> type:
    from nni.nas.oneshot.pytorch.strategy import OneShotStrategy

    if issubclass(cls, OneShotStrategy):
        return cls
    return type(cls.__name__, (cls, OneShotStrategy),
                {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


def instance_class(cls: type) -> type:
    """The class a strategy of class ``cls`` is created as.

    NNI 3.0's ``NasExperiment`` picks the sequential engine and the raw model format, which a one-shot
    strategy needs, only for an instance of its Lightning ``OneShotStrategy``. Where Lightning is
    loaded already (a script that imports ``NasExperiment`` or a Lightning evaluator), the instance is
    of a subclass of ``cls`` and ``OneShotStrategy`` in which ``cls`` overrides every method NNI calls
    (``_initialize``, ``_run``, ``list_models``, ``state_dict``, ``mutate_model``); elsewhere it is
    ``cls`` itself, and Lightning is never imported. A strategy created before Lightning is loaded
    and then given to ``NasExperiment`` needs its config to name the sequential engine and raw format.
    """
    return _recognised_by_nas_experiment(cls) if _lightning_loaded() else cls
