"""NNI tuner and assessor backed by Optuna."""
from nni_visplugin import _compat  # noqa: F401

from .optuna_assessor import OptunaAssessor
from .optuna_tuner import OptunaTuner, SearchSpaceError

__all__ = ["OptunaAssessor", "OptunaTuner", "SearchSpaceError"]
