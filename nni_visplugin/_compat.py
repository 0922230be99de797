"""Every accommodation NNI 3.0 needs on current PyTorch lives here, and nowhere else."""
from __future__ import annotations

import importlib
import sys
import warnings


def quiet_nni_import_warnings() -> None:
    """NNI 3.0 walks ``torch.nn`` at import time and warns about every class newer than itself
    (``Buffer``, ``LinearCrossEntropyOptions``, ...). Those classes are never used as modules
    in a search space, so the warnings are noise that would bury the plugin's own messages."""
    warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module", category=RuntimeWarning)
    # Lightning and NNI both still import pkg_resources, deprecated in setuptools 80.
    warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)


quiet_nni_import_warnings()


def import_nni_evaluator_without_lightning() -> None:
    """Import ``nni.nas.evaluator`` without the Lightning evaluators NNI copies into it.

    ``nni.nas.space`` (which every ``nni.nas.nn.pytorch`` space imports) imports ``nni.nas.evaluator``,
    whose ``__init__`` copies ``nni.nas.evaluator.pytorch`` (Lightning) into itself unless NNI's default
    framework is ``none``. The plugin's searches use no Lightning, so that one import runs with NNI's own
    switch ``set_default_framework("none")`` held; the evaluators stay importable from
    ``nni.nas.evaluator.pytorch``, as NNI's docs spell them. Called before the spaces and the strategies
    import NNI; does nothing once the package or Lightning is loaded anyway.
    """
    if "nni.nas.evaluator" in sys.modules or "pytorch_lightning" in sys.modules:
        return
    from nni.common.framework import get_default_framework, set_default_framework

    previous = get_default_framework()
    set_default_framework("none")
    try:
        importlib.import_module("nni.nas.evaluator")
    finally:
        set_default_framework(previous)


def current_parameter_id() -> int | None:
    """The tuner's parameter id of the running trial.

    NNI 3.0 keeps it only in the private ``nni.trial._params``. With several concurrent trials NNI's
    own trial records can show another trial's hyperparameters (NNI issue 5726); the id the trial
    really received is the one to trust, so it is written next to the trial's results.
    """
    import nni.trial

    params = getattr(nni.trial, "_params", None)
    return params.get("parameter_id") if isinstance(params, dict) else None


def report_to_nni_manager(message: str) -> bool:
    """End the running experiment with ``message``: the NNI manager marks it ERROR at once.

    NNI 3.0's dispatcher catches an exception of the tuner or assessor in a worker thread, logs it
    and goes on waiting for commands, so the experiment stays RUNNING with nothing to show (its
    ``report_error`` is only reached when the dispatcher's main loop itself raises). The plugin's
    tuner and assessor call this instead: it finds the dispatcher that called them on the stack and
    sends its ``Error`` command, which the manager turns into the ERROR status. Before a dispatcher
    exists (an exception while the tuner is being built) it connects to the manager's tuner channel
    itself, as the dispatcher would have, and sends the same command. Returns whether it was sent.
    """
    import os
    import sys

    from nni.runtime.msg_dispatcher_base import MsgDispatcherBase

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, MsgDispatcherBase):
            owner.report_error(message)
            return True
        frame = frame.f_back
    url = os.environ.get("NNI_TUNER_COMMAND_CHANNEL")
    if not url:
        return False  # not inside an NNI experiment: the exception itself is the report
    from nni.runtime.tuner_command_channel.channel import TunerCommandChannel
    from nni.runtime.tuner_command_channel.command_type import CommandType

    try:
        channel = TunerCommandChannel(url)
        channel.connect()
        channel._send(CommandType.Error, message)
        channel.disconnect()
        return True
    except Exception:  # the manager is gone: nothing left to tell
        return False
