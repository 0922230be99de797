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
from pathlib import Path
from typing import Any

import optuna
from nni.tuner import Tuner
from optuna.trial import TrialState

from nni_visplugin.tuners._space import Param, SearchSpaceError, compile_space, suggest, to_optuna_params

__all__ = ["OptunaTuner", "SearchSpaceError"]

_logger = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "cmaes", "qmc")


def _make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # Few trials per experiment: start modelling after 4 random ones instead of Optuna's 10.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=4)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")


SQLITE_LOCK_TIMEOUT_S = 60  # another writer holding the SQLite file: wait for it, do not fail the tuner


def make_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """An Optuna storage for ``url``; SQLite files wait for a concurrent writer's lock."""
    if url is None:
        return None
    if url.startswith("sqlite:"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}})
    return optuna.storages.RDBStorage(url)


def redact(url: str | None) -> str:
    """The storage URL without its password, for logs (NNI serves its logs without authentication)."""
    if url is None:
        return "memory"
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<storage URL not shown>"


def _experiment_dir() -> Path | None:
    """The experiment's directory when running inside NNI's dispatcher (``<dir>/<id>/log``)."""
    log_dir = os.environ.get("NNI_LOG_DIRECTORY")
    return Path(log_dir).parent if log_dir else None


class OptunaTuner(Tuner):
    """NNI ``Tuner`` over Optuna's ask/tell interface.

    Parameters
    ----------
    optimize_mode
        ``maximize`` or ``minimize`` the trials' final result (``metric`` key of a dict result).
    sampler
        ``tpe`` (default), ``random``, ``cmaes`` or ``qmc``.
    seed
        Seed of the sampler.
    storage
        Any SQLAlchemy URL Optuna accepts. Default: ``sqlite:///<experiment dir>/optuna.db`` inside an
        NNI experiment, an in-memory study outside one.
    study_name
        Default: ``nni-<experiment id>`` inside an NNI experiment.
    metric
        Key of a dict final result to optimise (NNI's convention: ``default``).
    """

    def __init__(self, optimize_mode: str = "maximize", sampler: str = "tpe", seed: int | None = None,
                 storage: str | None = None, study_name: str | None = None, metric: str = "default"):
        super().__init__()
        if optimize_mode not in ("maximize", "minimize"):
            raise ValueError(f"optimize_mode must be 'maximize' or 'minimize', got {optimize_mode!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.optimize_mode = optimize_mode
        self.metric = metric
        exp_dir = _experiment_dir()
        if storage is None and exp_dir is not None:
            storage = f"sqlite:///{exp_dir / 'optuna.db'}"
        if study_name is None:
            study_name = f"nni-{exp_dir.name}" if exp_dir is not None else None
        self.storage_url = storage
        self.experiment_id = exp_dir.name if exp_dir is not None else None
        self.study = optuna.create_study(
            storage=make_storage(storage), study_name=study_name, direction=optimize_mode,
            sampler=_make_sampler(sampler, seed), load_if_exists=True,
        )
        existing = len(self.study.get_trials(deepcopy=False))
        if existing and seed is not None:
            # A resumed or shared study: the same seed would draw the first trials' parameters again.
            self.study.sampler = _make_sampler(sampler, seed + existing)
        self._close_interrupted()
        self._params: tuple[Param, ...] | None = None
        self._trials: dict[int, optuna.Trial] = {}
        _logger.info("Optuna study %r (%s sampler) in %s", self.study.study_name, sampler, redact(storage))

    def _close_interrupted(self) -> None:
        """After a crash and ``nnictl resume``, trials this experiment left RUNNING will never be told:
        close them as FAIL. (NNI re-runs those trials; their results come back through ``import_data``.)
        Trials of other experiments sharing the study are left alone."""
        if self.experiment_id is None:
            return
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("nni_experiment") == self.experiment_id:
                self.study.tell(trial.number, state=TrialState.FAIL)
                _logger.warning("Optuna trial %d (NNI parameter id %s) was left running by an interrupted run: "
                                "told as FAIL", trial.number, trial.user_attrs.get("nni_parameter_id"))

    # ------------------------------------------------------------------ NNI tuner interface
    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self._params = compile_space(search_space)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if self._params is None:
            raise RuntimeError("the search space has not been set (update_search_space)")
        trial = self.study.ask()
        trial.set_user_attr("nni_parameter_id", parameter_id)
        if self.experiment_id is not None:
            trial.set_user_attr("nni_experiment", self.experiment_id)
        if kwargs.get("trial_job_id"):
            trial.set_user_attr("nni_trial_job_id", kwargs["trial_job_id"])
        params = suggest(trial, self._params)
        trial.set_user_attr("nni_params", json.dumps(params, sort_keys=True))
        self._trials[parameter_id] = trial
        return params

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        trial = self._trials.get(parameter_id)
        if trial is None:
            _logger.warning("result for unknown parameter id %s ignored", parameter_id)
            return
        score = self._scalar(value)
        if score is None:
            _logger.warning("trial %s reported a non-finite or missing %r: told to Optuna as FAIL", parameter_id, self.metric)
            self._finish(parameter_id, TrialState.FAIL)
            return
        if isinstance(value, dict):
            for k, v in value.items():
                if k != self.metric and isinstance(v, (int, float)) and not isinstance(v, bool):
                    trial.set_user_attr(f"result_{k}", v)
        if kwargs.get("trial_job_id"):
            # NNI's exported records (import on resume) name the trial job: this is how they are
            # recognised as already told, even where NNI paired them with other parameters (issue 5726).
            trial.set_user_attr("nni_trial_job_id", kwargs["trial_job_id"])
        self._finish(parameter_id, TrialState.COMPLETE, score)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        if parameter_id in self._trials:
            if success:
                _logger.warning("trial %s succeeded without a final result: told to Optuna as FAIL", parameter_id)
            self._finish(parameter_id, TrialState.FAIL)

    def import_data(self, data: list[dict[str, Any]]) -> None:
        """Add finished trials (``nnictl experiment import``, ``nnictl resume``) to the study, once each."""
        if self._params is None:
            raise RuntimeError("the search space must be set before importing data")
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        seen = {(t.user_attrs.get("nni_params"), t.value) for t in complete}
        seen_jobs = {t.user_attrs["nni_trial_job_id"] for t in complete if t.user_attrs.get("nni_trial_job_id")}
        added = 0
        for record in data:
            params = record.get("parameter")
            score = self._scalar(record.get("value"))
            if not isinstance(params, dict) or score is None:
                _logger.warning("import_data: skipping malformed record %r", record)
                continue
            key = json.dumps(params, sort_keys=True)
            job = record.get("trialJobId")
            if (key, score) in seen or (job and job in seen_jobs):
                continue
            try:
                values, dists = to_optuna_params(self._params, params)
            except (SearchSpaceError, ValueError, KeyError, TypeError) as exc:
                _logger.warning("import_data: record does not fit the search space (%s): %r", exc, params)
                continue
            attrs = {"nni_params": key, "imported": True}
            if job:
                attrs["nni_trial_job_id"] = job
                seen_jobs.add(job)
            if self.experiment_id is not None:
                attrs["nni_experiment"] = self.experiment_id
            self.study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=score,
                                                           user_attrs=attrs))
            seen.add((key, score))
            added += 1
        _logger.info("import_data: %d of %d records added to the study", added, len(data))

    # ------------------------------------------------------------------ helpers
    def _scalar(self, value: Any) -> float | None:
        if isinstance(value, dict):
            value = value.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)

    def _finish(self, parameter_id: int, state: TrialState, value: float | None = None) -> None:
        trial = self._trials.pop(parameter_id)
        self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
