"""The names NNI experiment configs use as ``className``: ``nni_visplugin.tuners.OptunaTuner`` and
``nni_visplugin.tuners.OptunaAssessor``. The code lives in :mod:`nni_visplugin.hpo`."""
from nni_visplugin import _compat  # noqa: F401
from nni_visplugin.hpo.assessor import OptunaAssessor
from nni_visplugin.hpo.space import SearchSpaceError
from nni_visplugin.hpo.tuner import OptunaTuner

__all__ = ["OptunaTuner", "OptunaAssessor", "SearchSpaceError"]
