"""What the tuner, the assessor and the CLI share: storages, samplers, pruners, error reporting.

The tuner and the assessor of one experiment run in the same NNI dispatcher process; the assessor
judges the tuner's own Optuna trials through :data:`LINK`, so a pruned trial is told to the study
as PRUNED with its intermediate values, where the samplers and pruners can use them.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import random
import sys
import threading
import time
import traceback
from typing import Any, Callable

import optuna

_logger = logging.getLogger("nni_visplugin.tuners")

SAMPLERS = ("tpe", "random", "cmaes", "qmc", "nsga2", "nsga3", "motpe")
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "motpe", "nsga2", "nsga3", "random", "qmc")
PRUNERS = ("median", "percentile", "halving", "hyperband")
SQLITE_LOCK_TIMEOUT_S = 60  # another writer holding the SQLite file: wait for it, do not fail the tuner


# ---------------------------------------------------------------------- storages
def storage_url(storage: str | None, storage_env: str | None) -> str | None:
    """The storage URL from ``storage`` or from the environment variable named by ``storage_env``.

    NNI serves the experiment config (classArgs included) over its unauthenticated REST API and
    writes it to its logs, so a URL with a password is refused there: it belongs in the environment.
    """
    if storage is not None and storage_env is not None:
        raise ValueError("give either storage or storage_env, not both")
    if storage_env is not None:
        if not isinstance(storage_env, str) or not storage_env:
            raise ValueError(f"storage_env must name an environment variable, got {storage_env!r}")
        url = os.environ.get(storage_env)
        if not url:
            raise ValueError(f"storage_env: the environment variable {storage_env} is not set; "
                             f"export {storage_env}=postgresql+psycopg2://USER:PASSWORD@HOST/DB before nnictl create/resume")
        return url
    if storage is not None:
        if not isinstance(storage, str):
            raise ValueError(f"storage must be a database URL, got {storage!r}")
        if _password(storage) is not None:
            raise ValueError("storage: the URL holds a password, and NNI shows experiment configs to anyone who can "
                             "reach its web UI; put the URL in an environment variable and name it in storage_env")
    return storage


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        return None


def make_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """An Optuna storage for ``url``; SQLite files wait for a concurrent writer's lock."""
    if url is None:
        return None
    if url.startswith("sqlite:"):
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    else:
        # pool_pre_ping: a shared server may drop idle connections between two trials of a long search.
        engine_kwargs = {"pool_pre_ping": True}
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (IntegrityError, ProgrammingError):
            # Several experiments starting on one empty database all create Optuna's tables at once;
            # the losers of that race find them made on the next try.
            if attempt == 4:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def redact(url: str | None) -> str:
    """The storage URL without its password, for logs (NNI serves its logs without authentication)."""
    if url is None:
        return "memory"
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<storage URL not shown>"


# ---------------------------------------------------------------------- samplers and pruners
def import_object(path: str) -> Any:
    """``package.module:Name`` or ``package.module.Name``."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    if not module or not name:
        raise ValueError(f"{path!r} is not an importable name (package.module:Name)")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None


def _custom(path: str, kwargs: dict[str, Any], seed: int | None = None) -> Any:
    cls = import_object(path)
    kwargs = dict(kwargs)
    if seed is not None and "seed" in inspect.signature(cls).parameters:
        kwargs.setdefault("seed", seed)
    return cls(**kwargs)


def make_sampler(name: str, seed: int | None, multi_objective: bool = False,
                 sampler_args: dict[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    """A sampler by name, or any class given as ``package.module:Name`` (built with ``sampler_args``)."""
    if not isinstance(name, str):
        raise ValueError(f"sampler must be a name, got {name!r}")
    if name not in SAMPLERS:
        if "." in name or ":" in name:
            return _custom(name, sampler_args or {}, seed)
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)} or package.module:Class")
    if multi_objective and name not in MULTI_OBJECTIVE_SAMPLERS:
        raise ValueError(f"sampler {name!r} optimises one objective; with objectives use one of "
                         f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}")
    args = dict(sampler_args or {})
    if name in ("tpe", "motpe"):
        # Few trials per experiment: start modelling after 4 random ones instead of Optuna's 10.
        args.setdefault("n_startup_trials", 4)
        args.setdefault("constant_liar", True)  # concurrent trials: do not draw next to a running one
        if not multi_objective:
            args.setdefault("multivariate", True)
        return optuna.samplers.TPESampler(seed=seed, **args)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed, **args)
    if name == "cmaes":
        args.setdefault("n_startup_trials", 4)
        return optuna.samplers.CmaEsSampler(seed=seed, **args)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, **args)
    if name == "nsga2":
        args.setdefault("population_size", 8)  # an NNI experiment runs tens of trials, not thousands
        return optuna.samplers.NSGAIISampler(seed=seed, **args)
    args.setdefault("population_size", 8)
    return optuna.samplers.NSGAIIISampler(seed=seed, **args)


def make_pruner(name: str, pruner_args: dict[str, Any]) -> optuna.pruners.BasePruner:
    if not isinstance(name, str):
        raise ValueError(f"pruner must be a name, got {name!r}")
    if name not in PRUNERS:
        if "." in name or ":" in name:
            return _custom(name, pruner_args)
        raise ValueError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)} or package.module:Class")
    a = pruner_args
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=a["n_startup_trials"], n_warmup_steps=a["n_warmup_steps"],
                                           interval_steps=a["interval_steps"])
    if name == "percentile":
        return optuna.pruners.PercentilePruner(a["percentile"], n_startup_trials=a["n_startup_trials"],
                                               n_warmup_steps=a["n_warmup_steps"], interval_steps=a["interval_steps"])
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=a["min_resource"],
                                                      reduction_factor=a["reduction_factor"])
    return optuna.pruners.HyperbandPruner(min_resource=a["min_resource"], max_resource=a["max_resource"],
                                          reduction_factor=a["reduction_factor"])


# ---------------------------------------------------------------------- the tuner/assessor link
class _Link:
    """The tuner of this dispatcher process, and what the assessor decided about its trials."""

    def __init__(self) -> None:
        self.tuner: Any = None
        self.pruned: dict[int, int] = {}  # parameter id -> step at which the assessor pruned it
        self.lock = threading.RLock()  # NNI calls the tuner and the assessor from two threads


LINK = _Link()


# ---------------------------------------------------------------------- errors
def surface_errors(role: str) -> Callable:
    """Decorate an NNI-facing method: an exception ends the experiment with its message.

    The message goes to the NNI manager (status ERROR, seen by ``nnictl experiment status`` and the
    web UI) and, with its traceback, to the dispatcher log (``nnictl log stderr`` and the web UI's
    log view). NNI's own ``NoMoreTrialError`` is control flow, not a fault.
    """
    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def guarded(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                from nni import NoMoreTrialError

                if isinstance(exc, NoMoreTrialError):
                    raise
                report_failure(f"{role} {type(self).__name__}.{method.__name__}", exc)
                raise
        return guarded
    return wrap


def report_failure(where: str, exc: BaseException) -> None:
    from nni_visplugin import _compat

    message = f"nni-visplugin: {where} failed: {type(exc).__name__}: {exc}"
    _logger.error("%s\n%s", message, "".join(traceback.format_exception(exc)))
    print(message, file=sys.stderr, flush=True)
    if _compat.report_to_nni_manager(message):
        _logger.error("experiment ended with ERROR: %s", message)
