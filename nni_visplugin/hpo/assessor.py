"""An NNI assessor that stops unpromising trials with an Optuna pruner.

NNI hands the assessor a trial's intermediate results after every epoch; the assessor reports them
to the trial's Optuna trial and asks the pruner. When the pruner says stop, NNI kills the trial
(EARLY_STOPPED in the web UI) and the tuner tells the study PRUNED, so the pruner and the sampler
see how far it got.

With the plugin's :class:`~nni_visplugin.tuners.OptunaTuner` in the same experiment, the assessor
judges the tuner's own trials: the trials report their NNI ``parameter_id`` in each intermediate
result (``{"default": ..., "parameter_id": ...}``), which names the Optuna trial. With another tuner
or other trials it keeps a study of its own in memory, so the pruner still works.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from nni.assessor import Assessor, AssessResult
from optuna.trial import TrialState

from nni_visplugin.hpo.study import LINK, PRUNERS, make_pruner, surface_errors

__all__ = ["OptunaAssessor", "PRUNERS"]

_logger = logging.getLogger(__name__)


class OptunaAssessor(Assessor):
    """NNI ``Assessor`` backed by an Optuna pruner.

    Parameters
    ----------
    pruner
        ``median`` (default), ``percentile``, ``halving`` (successive halving), ``hyperband``, or any
        pruner class as ``package.module:Class``, built with ``pruner_args``.
    n_startup_trials, n_warmup_steps, interval_steps
        ``median`` and ``percentile``: no pruning until this many trials have completed, before this
        step of a trial, and only every this many steps.
    percentile
        ``percentile``: prune below this percentile of the completed trials at the same step.
    min_resource, max_resource, reduction_factor
        ``halving`` and ``hyperband``: steps (epochs) of the first rung, of the longest trial
        (``auto``: the longest seen), and the ratio between rungs.
    optimize_mode, metric
        Only without the plugin's tuner (which decides both): ``maximize`` or ``minimize`` the
        ``metric`` key of dict intermediate results.
    pruner_args
        Keyword arguments of a custom pruner class.
    """

    @surface_errors("assessor")
    def __init__(self, pruner: str = "median", n_startup_trials: int = 4, n_warmup_steps: int = 1,
                 interval_steps: int = 1, percentile: float = 50.0, min_resource: int | str = 1,
                 max_resource: int | str = "auto", reduction_factor: int = 3, optimize_mode: str = "maximize",
                 metric: str = "default", pruner_args: dict[str, Any] | None = None):
        super().__init__()
        for name, value, low in (("n_startup_trials", n_startup_trials, 0), ("n_warmup_steps", n_warmup_steps, 0),
                                 ("interval_steps", interval_steps, 1), ("reduction_factor", reduction_factor, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0 < percentile < 100:
            raise ValueError(f"percentile must lie in (0, 100), got {percentile!r}")
        if optimize_mode not in ("maximize", "minimize"):
            raise ValueError(f"optimize_mode must be 'maximize' or 'minimize', got {optimize_mode!r}")
        if pruner_args is not None and not isinstance(pruner_args, dict):
            raise ValueError(f"pruner_args must be a mapping, got {pruner_args!r}")
        args = {"n_startup_trials": n_startup_trials, "n_warmup_steps": n_warmup_steps,
                "interval_steps": interval_steps, "percentile": percentile, "min_resource": min_resource,
                "max_resource": max_resource, "reduction_factor": reduction_factor}
        self.pruner = make_pruner(pruner, pruner_args if pruner not in PRUNERS else args)
        self.pruner_name = pruner
        self.metric = metric
        self.tuner = LINK.tuner  # NNI builds the tuner before the assessor, in the same process
        if self.tuner is not None:
            if self.tuner.multi_objective:
                raise ValueError("Optuna prunes single-objective studies only, and the tuner has objectives "
                                 f"{[k for k, _ in self.tuner.objectives]}: remove the assessor or the objectives")
            self.metric = self.tuner.metric
            self.tuner.study.pruner = self.pruner
            self.tuner.assessor_attached = True
        # Trials the assessor judges without the plugin's tuner: a study of its own.
        self._own = optuna.create_study(direction=optimize_mode, pruner=self.pruner)
        self._own_trials: dict[str, optuna.Trial] = {}
        self._reported: dict[str, int] = {}  # trial job id -> number of steps reported
        self._parameter_ids: dict[str, int] = {}
        self._last: dict[str, float] = {}
        _logger.info("Optuna assessor: %s pruner, %s", pruner,
                     "judging the tuner's study" if self.tuner is not None else "with a study of its own")

    @surface_errors("assessor")
    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        values = [self._scalar(v) for v in trial_history]
        if not values or any(v is None for v in values):
            _logger.warning("trial %s: intermediate results without a finite %r; not judged", trial_job_id, self.metric)
            return AssessResult.Good
        with LINK.lock:
            trial, pid = self._trial_of(trial_job_id, trial_history[-1])
            if trial is None:
                return AssessResult.Good  # the tuner has already closed it
            done = self._reported.get(trial_job_id, 0)
            for step in range(done, len(values)):
                trial.report(values[step], step)
            self._reported[trial_job_id] = len(values)
            if pid is None:
                self._last[trial_job_id] = values[-1]
            if not trial.should_prune():
                return AssessResult.Good
            step = len(values) - 1
            if pid is not None:
                LINK.pruned[pid] = step
        _logger.info("trial %s pruned by the %s pruner at step %d (value %.6g)", trial_job_id, self.pruner_name,
                     step, values[-1])
        return AssessResult.Bad

    @surface_errors("assessor")
    def trial_end(self, trial_job_id: str, success: bool) -> None:
        with LINK.lock:
            self._reported.pop(trial_job_id, None)
            self._parameter_ids.pop(trial_job_id, None)
            trial = self._own_trials.pop(trial_job_id, None)
            if trial is None:
                return  # a tuner trial: the tuner closes it
            last = self._last.pop(trial_job_id, None)
            if success and last is not None:
                self._own.tell(trial, last)
            else:
                self._own.tell(trial, state=TrialState.PRUNED if last is not None else TrialState.FAIL)

    # ------------------------------------------------------------------ helpers
    def _trial_of(self, trial_job_id: str, last: Any) -> tuple[optuna.Trial | None, int | None]:
        if trial_job_id in self._own_trials:
            return self._own_trials[trial_job_id], None
        pid = self._parameter_ids.get(trial_job_id)
        if pid is None and isinstance(last, dict) and isinstance(last.get("parameter_id"), int):
            pid = self._parameter_ids[trial_job_id] = last["parameter_id"]
        if self.tuner is not None and pid is not None:
            if pid in self.tuner._trials:
                return self.tuner._trials[pid], pid
            return None, pid
        if self.tuner is not None:
            _logger.warning("trial %s reports no parameter_id in its intermediate results: judged outside the "
                            "tuner's study", trial_job_id)
        trial = self._own_trials[trial_job_id] = self._own.ask()
        return trial, None

    def _scalar(self, value: Any) -> float | None:
        if isinstance(value, dict):
            value = value.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)
