"""NNI tuners backed by Optuna."""
from nni_visplugin import _compat  # noqa: F401

from .optuna_tuner import OptunaTuner, SearchSpaceError

__all__ = ["OptunaTuner", "SearchSpaceError"]
