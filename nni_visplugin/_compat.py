"""Every accommodation NNI 3.0 needs on current PyTorch lives here, and nowhere else."""
from __future__ import annotations

import warnings


def quiet_nni_import_warnings() -> None:
    """NNI 3.0 walks ``torch.nn`` at import time and warns about every class newer than itself
    (``Buffer``, ``LinearCrossEntropyOptions``, ...). Those classes are never used as modules
    in a search space, so the warnings are noise that would bury the plugin's own messages."""
    warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module", category=RuntimeWarning)
    # Lightning and NNI both still import pkg_resources, deprecated in setuptools 80.
    warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)


quiet_nni_import_warnings()


class _DropSupernetModuleWarning:
    """NNI's ``mutate_model`` warns when a hook returns a module that is not one of its own
    ``BaseSuperNetModule``s. The plugin's mixed modules are deliberately not: NNI's protocol decides
    each module's choice on its own, while DARTS derives a node's inputs from its edges' weights
    (:func:`nni_visplugin.supernet.derive_architecture`)."""

    @staticmethod
    def filter(record) -> bool:
        return "didn't return a BaseSuperNetModule" not in record.getMessage()


def install_log_filters() -> None:
    import logging

    logger = logging.getLogger("nni.nas.oneshot.pytorch.strategy")
    if not any(isinstance(f, _DropSupernetModuleWarning) for f in logger.filters):
        logger.addFilter(_DropSupernetModuleWarning())


install_log_filters()


def current_parameter_id() -> int | None:
    """The tuner's parameter id of the running trial.

    NNI 3.0 keeps it only in the private ``nni.trial._params``. With several concurrent trials NNI's
    own trial records can show another trial's hyperparameters (NNI issue 5726); the id the trial
    really received is the one to trust, so it is written next to the trial's results.
    """
    import nni.trial

    params = getattr(nni.trial, "_params", None)
    return params.get("parameter_id") if isinstance(params, dict) else None
