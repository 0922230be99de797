"""nni-visplugin: differentiable architecture search for vision, as a plugin for Microsoft NNI.

Heavy modules (torch, NNI) load on first use, so ``nni-visplugin --help`` stays fast.
"""
from __future__ import annotations

from typing import Any

from nni_visplugin import _compat  # noqa: F401
from nni_visplugin.utils.registry import SPACES, STRATEGIES, register_space, register_strategy

__version__ = "0.1.0"

__all__ = [
    "create_space",
    "create_strategy",
    "list_spaces",
    "list_strategies",
    "load_model",
    "register_space",
    "register_strategy",
    "run_search",
    "SearchConfig",
    "retrain",
    "RetrainConfig",
    "export_model",
    "run_pipeline",
    "PipelineConfig",
]

_LAZY = {
    "SearchConfig": "nni_visplugin.config.search",
    "retrain": "nni_visplugin.stages.retrain",
    "RetrainConfig": "nni_visplugin.config.retrain",
    "export_model": "nni_visplugin.stages.export",
    "run_pipeline": "nni_visplugin.stages.pipeline",
    "PipelineConfig": "nni_visplugin.config.pipeline",
}


def create_space(name: str, **kwargs: Any):
    """Instantiate the registered search space ``name`` (an NNI ``ModelSpace``)."""
    return SPACES.create(name, **kwargs)


def create_strategy(name: str, **kwargs: Any):
    """Instantiate the registered strategy ``name`` (an NNI ``Strategy``)."""
    return STRATEGIES.create(name, **kwargs)


def list_spaces() -> list[str]:
    return SPACES.names()


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def load_model(directory, *, weights: bool = True):
    """Rebuild the fixed, trained model from a search output directory."""
    from nni_visplugin.stages.search import load_model as _load

    return _load(directory, weights=weights)


def run_search(config, out_dir, **kwargs):
    """Run one search; see :func:`nni_visplugin.stages.search.run_search`."""
    from nni_visplugin.stages.search import run_search as _run

    return _run(config, out_dir, **kwargs)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
