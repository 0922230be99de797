"""An NNI tuner that asks Optuna for every trial's hyperparameters and tells it every result.

Each NNI ``parameter_id`` owns exactly one Optuna trial (kept in a dict and recorded on the trial as
the user attribute ``nni_parameter_id``), so with several trials running at once every result is
told to the trial that produced it, whatever order NNI reports them in. Results land in a real
Optuna storage (by default a SQLite file next to the experiment's logs), so the study outlives the
NNI manager and can be opened in optuna-dashboard.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from nni.tuner import Tuner
from optuna.trial import TrialState

from nni_visplugin.hpo.space import Param, SearchSpaceError, compile_space, suggest, to_optuna_params
from nni_visplugin.hpo.study import LINK, SAMPLERS, make_sampler, make_storage, redact, storage_url, surface_errors

__all__ = ["OptunaTuner", "SearchSpaceError", "SAMPLERS", "make_storage", "redact"]

_logger = logging.getLogger(__name__)
MODES = ("maximize", "minimize")

def _experiment_dir() -> Path | None:
    """The experiment's directory when running inside NNI's dispatcher (``<dir>/<id>/log``)."""
    log_dir = os.environ.get("NNI_LOG_DIRECTORY")
    return Path(log_dir).parent if log_dir else None



def _objectives(objectives: Any, optimize_mode: str | None, metric: str) -> tuple[tuple[str, str], ...]:
    """``((metric, mode), ...)`` from either ``objectives`` or ``optimize_mode``/``metric``."""
    if objectives is None:
        mode = optimize_mode or "maximize"
        if mode not in MODES:
            raise ValueError(f"optimize_mode must be 'maximize' or 'minimize', got {mode!r}")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric must be a key of the trials' final result, got {metric!r}")
        return ((metric, mode),)
    if optimize_mode is not None or metric != "default":
        raise ValueError("with objectives, leave out optimize_mode and metric: each objective names its own")
    if not isinstance(objectives, dict) or not objectives:
        raise ValueError("objectives must map result keys to maximize/minimize, e.g. "
                         "{default: maximize, num_params: minimize}")
    for key, mode in objectives.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"objectives: {key!r} is not a result key")
        if mode not in MODES:
            raise ValueError(f"objectives.{key}: must be maximize or minimize, got {mode!r}")
    return tuple(objectives.items())


class OptunaTuner(Tuner):
    """NNI ``Tuner`` over Optuna's ask/tell interface.

    Parameters
    ----------
    optimize_mode
        ``maximize`` (default) or ``minimize`` the trials' final result (``metric`` key of a dict result).
    sampler
        ``tpe`` (default), ``random``, ``cmaes``, ``qmc``, ``nsga2``, ``nsga3``, ``motpe`` (multi-objective
        TPE), or any sampler class as ``package.module:Class``, built with ``sampler_args``.
    seed
        Seed of the sampler.
    storage
        A SQLAlchemy URL Optuna accepts, without a password. Default: ``sqlite:///<experiment dir>/optuna.db``
        inside an NNI experiment, an in-memory study outside one.
    storage_env
        Instead of ``storage``: the name of an environment variable holding the URL (for a PostgreSQL
        server with a password; NNI serves the experiment config without authentication).
    study_name
        Default: ``nni-<experiment id>`` inside an NNI experiment. Experiments naming the same study in
        the same storage share it (give them different seeds).
    metric
        Key of a dict final result to optimise (NNI's convention: ``default``).
    objectives
        For a multi-objective study: result keys mapped to ``maximize``/``minimize``, e.g.
        ``{default: maximize, num_params: minimize}``; replaces ``optimize_mode`` and ``metric``.
    sampler_args
        Extra keyword arguments of the sampler.
    """

    @surface_errors("tuner")
    def __init__(self, optimize_mode: str | None = None, sampler: str = "tpe", seed: int | None = None,
                 storage: str | None = None, study_name: str | None = None, metric: str = "default",
                 objectives: dict[str, str] | None = None, storage_env: str | None = None,
                 sampler_args: dict[str, Any] | None = None):
        super().__init__()
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if sampler_args is not None and not isinstance(sampler_args, dict):
            raise ValueError(f"sampler_args must be a mapping, got {sampler_args!r}")
        self.objectives = _objectives(objectives, optimize_mode, metric)
        self.multi_objective = len(self.objectives) > 1
        self.optimize_mode = self.objectives[0][1]
        self.metric = self.objectives[0][0]
        exp_dir = _experiment_dir()
        storage = storage_url(storage, storage_env)
        if storage is None and exp_dir is not None:
            storage = f"sqlite:///{exp_dir / 'optuna.db'}"
        if study_name is None:
            study_name = f"nni-{exp_dir.name}" if exp_dir is not None else None
        self.storage_url = storage
        self.experiment_id = exp_dir.name if exp_dir is not None else None
        directions = [mode for _, mode in self.objectives]
        self.study = optuna.create_study(
            storage=make_storage(storage), study_name=study_name, directions=directions,
            sampler=make_sampler(sampler, seed, self.multi_objective, sampler_args), load_if_exists=True,
        )
        if self.study.directions != [optuna.study.StudyDirection[m.upper()] for m in directions]:
            raise ValueError(f"study {study_name!r} in {redact(storage)} already exists with other objectives "
                             f"({[d.name.lower() for d in self.study.directions]}); choose another study_name")
        if self.multi_objective:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names([key for key, _ in self.objectives])  # named in optuna-dashboard
        existing = len(self.study.get_trials(deepcopy=False))
        if existing and seed is not None:
            # A resumed or shared study: the same seed would draw the first trials' parameters again.
            self.study.sampler = make_sampler(sampler, seed + existing, self.multi_objective, sampler_args)
        self._close_interrupted()
        self._params: tuple[Param, ...] | None = None
        self._trials: dict[int, optuna.Trial] = {}
        self._ended_without_result: set[int] = set()
        self._results: dict[int, list[float]] = {}  # told at the trial's end when an assessor is attached
        self.assessor_attached = False
        with LINK.lock:
            LINK.tuner = self
        _logger.info("Optuna study %r (%s sampler, objectives %s) in %s", self.study.study_name, sampler,
                     ", ".join(f"{k}:{m}" for k, m in self.objectives), redact(storage))

    def _close_interrupted(self) -> None:
        """After a crash and ``nnictl resume``, trials this experiment left RUNNING will never be told:
        close them as FAIL. (NNI re-runs those trials; their results come back through ``import_data``.)
        Trials of other experiments sharing the study are left alone."""
        if self.experiment_id is None:
            return
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("nni_experiment") != self.experiment_id:
                continue
            pending = trial.user_attrs.get("nni_pending_values")
            if pending is not None and len(pending) == len(self.objectives):
                # Its final result had arrived; only the end of the trial had not been handled.
                self.study.tell(trial.number, pending, state=TrialState.COMPLETE)
                _logger.warning("Optuna trial %d (NNI parameter id %s): its result arrived before the interruption: "
                                "told as COMPLETE", trial.number, trial.user_attrs.get("nni_parameter_id"))
                continue
            self.study.tell(trial.number, state=TrialState.FAIL)
            _logger.warning("Optuna trial %d (NNI parameter id %s) was left running by an interrupted run: "
                            "told as FAIL", trial.number, trial.user_attrs.get("nni_parameter_id"))

    # ------------------------------------------------------------------ NNI tuner interface
    @surface_errors("tuner")
    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self._params = compile_space(search_space)

    @surface_errors("tuner")
    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if self._params is None:
            raise RuntimeError("the search space has not been set (update_search_space)")
        trial = self.study.ask()
        params = suggest(trial, self._params)
        trial.set_user_attr("nni_params", json.dumps(params, sort_keys=True))
        trial.set_user_attr("nni_parameter_id", parameter_id)
        if self.experiment_id is not None:
            trial.set_user_attr("nni_experiment", self.experiment_id)
        if kwargs.get("trial_job_id"):
            trial.set_user_attr("nni_trial_job_id", kwargs["trial_job_id"])
        with LINK.lock:
            self._trials[parameter_id] = trial
        return params

    @surface_errors("tuner")
    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        with LINK.lock:
            trial = self._trials.get(parameter_id)
            if trial is None:
                _logger.warning("result for unknown or already closed parameter id %s ignored", parameter_id)
                return
            values = self._values(value)
            if values is None:
                _logger.warning("trial %s reported a non-finite or missing %s: told to Optuna as FAIL", parameter_id,
                                " / ".join(repr(k) for k, _ in self.objectives))
                self._finish(parameter_id, TrialState.FAIL)
                return
            if isinstance(value, dict):
                objective_keys = {k for k, _ in self.objectives}
                for k, v in value.items():
                    if k not in objective_keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                        trial.set_user_attr(f"result_{k}", v)
            if kwargs.get("trial_job_id"):
                # NNI's exported records (import on resume) name the trial job: this is how they are
                # recognised as already told, even where NNI paired them with other parameters (issue 5726).
                trial.set_user_attr("nni_trial_job_id", kwargs["trial_job_id"])
            if self.assessor_attached and parameter_id not in self._ended_without_result:
                # NNI hands the trial's last intermediate results to the assessor on another queue, which
                # may still hold them; that queue also carries the trial's end, after them: tell then.
                # Kept in the study meanwhile, so a crash before the end loses nothing (see resume).
                self._results[parameter_id] = values
                trial.set_user_attr("nni_pending_values", values)
                return
            self._ended_without_result.discard(parameter_id)
            self._finish(parameter_id, TrialState.COMPLETE, values)

    @surface_errors("tuner")
    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        with LINK.lock:
            if parameter_id not in self._trials:
                return
            if parameter_id in self._results:
                LINK.pruned.pop(parameter_id, None)  # it finished anyway: the result is worth more
                self._finish(parameter_id, TrialState.COMPLETE, self._results.pop(parameter_id))
            elif parameter_id in LINK.pruned:
                # Stopped by the assessor: Optuna records the last intermediate value it was judged on.
                self._finish(parameter_id, TrialState.PRUNED)
                _logger.info("trial %s pruned at step %d: told to Optuna as PRUNED", parameter_id,
                             LINK.pruned.pop(parameter_id))
            elif success:
                # NNI can deliver a final result after the trial's end, even after asking for the next
                # trial (seen with 2 trials at a time): the trial stays open until its result comes or
                # the experiment ends.
                self._ended_without_result.add(parameter_id)
            else:
                self._finish(parameter_id, TrialState.FAIL)

    @surface_errors("tuner")
    def import_data(self, data: list[dict[str, Any]]) -> None:
        """Add finished trials (``nnictl experiment import``, ``nnictl resume``) to the study, once each."""
        if self._params is None:
            raise RuntimeError("the search space must be set before importing data")
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        seen = {(t.user_attrs.get("nni_params"), tuple(t.values)) for t in complete}
        seen_jobs = {(t.user_attrs.get("nni_experiment"), t.user_attrs["nni_trial_job_id"])
                     for t in complete if t.user_attrs.get("nni_trial_job_id")}
        added = 0
        for record in data:
            params = record.get("parameter")
            values = self._values(record.get("value"))
            if not isinstance(params, dict) or values is None:
                _logger.warning("import_data: skipping malformed record %r", record)
                continue
            key = json.dumps(params, sort_keys=True)
            job = record.get("trialJobId")
            if (key, tuple(values)) in seen or (job and (self.experiment_id, job) in seen_jobs):
                continue
            try:
                dist_values, dists = to_optuna_params(self._params, params)
            except (SearchSpaceError, ValueError, KeyError, TypeError) as exc:
                _logger.warning("import_data: record does not fit the search space (%s): %r", exc, params)
                continue
            attrs = {"nni_params": key, "imported": True}
            if job:
                attrs["nni_trial_job_id"] = job
                seen_jobs.add((self.experiment_id, job))
            if self.experiment_id is not None:
                attrs["nni_experiment"] = self.experiment_id
            self.study.add_trial(optuna.trial.create_trial(params=dist_values, distributions=dists, values=values,
                                                           user_attrs=attrs))
            seen.add((key, tuple(values)))
            added += 1
        _logger.info("import_data: %d of %d records added to the study", added, len(data))

    def _on_exit(self) -> None:
        with LINK.lock:
            for pid in sorted(self._results):
                self._finish(pid, TrialState.COMPLETE, self._results.pop(pid))
            for pid in sorted(self._ended_without_result):
                if pid in self._trials:
                    _logger.warning("trial %s succeeded without a final result: told to Optuna as FAIL", pid)
                    self._finish(pid, TrialState.FAIL)
            self._ended_without_result.clear()
            # The experiment is over (or stopped): parameters NNI asked for but never ran, or trials
            # it will re-run after a resume (their results then come back through import_data).
            for pid in sorted(self._trials):
                _logger.info("trial %s had not ended when the experiment stopped: told to Optuna as FAIL", pid)
                self._finish(pid, TrialState.FAIL)

    # ------------------------------------------------------------------ helpers
    def _values(self, value: Any) -> list[float] | None:
        """The objectives' values from a final result, or None when one is missing or not finite."""
        if not isinstance(value, dict):
            if self.multi_objective:
                return None
            value = {self.metric: value}
        out = []
        for key, _ in self.objectives:
            v = value.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return None
            out.append(float(v))
        return out

    def _finish(self, parameter_id: int, state: TrialState, values: list[float] | None = None) -> None:
        trial = self._trials.pop(parameter_id)
        self.study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
