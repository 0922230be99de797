"""NNI search-space specifications -> Optuna suggestions, with NNI's sampling semantics.

NNI types and how they are drawn (values returned to the trial are exactly NNI's):

================  =======================================  ==========================================
NNI ``_type``     ``_value``                               Optuna parameter -> value sent to the trial
================  =======================================  ==========================================
choice            [v0, v1, ...]                            categorical over the values (or their
                                                           indices when values are not scalars)
randint           [lower, upper)                           int in [lower, upper - 1]
uniform           [low, high]                              float in [low, high] (low == high: low)
quniform          [low, high, q]                           float x in [low, high] -> clip(round(x/q)*q)
loguniform        [low, high]                              log-scaled float in [low, high]
qloguniform       [low, high, q]                           log-scaled x -> clip(round(x/q)*q)
normal            [mu, sigma]                              quantile u in (0, 1) -> mu + sigma*Phi^-1(u)
qnormal           [mu, sigma, q]                           as normal, then round(x/q)*q
lognormal         [mu, sigma]                              as normal, then exp(x)
qlognormal        [mu, sigma, q]                           exp(normal), then round(x/q)*q
================  =======================================  ==========================================

A continuous range with low == high is a single point, as in NNI; ``randint [a, a]`` is empty and
refused. Optuna has no normal distribution, so the normal family is drawn through its quantile: a random
sampler then reproduces NNI's prior exactly, and TPE models the quantile. A ``choice`` whose
values are dicts with ``_name`` is NNI's nested space: the chosen dict's other keys are sampled
as a sub-space, named ``key/_name/subkey`` in the study. Unlike NNI, two options with the same
``_name`` are refused: the trial could not tell which was drawn. As in NNI, the values of the
``q`` types are floats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from nni_visplugin.utils.errors import UserError

__all__ = ["SearchSpaceError", "Param", "compile_space", "suggest", "to_optuna_params"]

_EPS = 1e-12
_STD_NORMAL = NormalDist()


class SearchSpaceError(UserError, ValueError):
    """An NNI search space is invalid; the message names the parameter."""


@dataclass(frozen=True)
class Param:
    name: str  # the Optuna parameter name (prefixed inside nested choices)
    key: str  # the key in the dict sent to the trial
    nni_type: str
    distribution: BaseDistribution
    to_value: Callable[[Any], Any]  # Optuna value -> NNI value
    to_param: Callable[[Any], Any]  # NNI value -> Optuna value (import_data)
    children: tuple[tuple["Param", ...], ...] | None = None  # nested choice: sub-space per option
    option_names: tuple[str, ...] = ()  # nested choice: the options' _name


def _number(x: Any, name: str, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise SearchSpaceError(f"search space parameter {name!r}: {what} must be a finite number, got {x!r}")
    return x


def _quantize(x: float, q: float, low: float | None = None, high: float | None = None) -> float:
    v = round(x / q) * q
    if low is not None:
        v = min(max(v, low), high)
    return v


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _invalid(name: str, what: str) -> SearchSpaceError:
    return SearchSpaceError(f"search space parameter {name!r}: {what}")


def _arity(name: str, t: str, v: list[Any], n: int) -> None:
    if len(v) != n:
        raise _invalid(name, f"{t} takes {n} values, got {len(v)}")


def _step(name: str, x: Any) -> float:
    q = float(_number(x, name, "q"))  # NNI's values of the q types are floats, even for integer q
    if q <= 0:
        raise _invalid(name, f"q must be > 0, got {q}")
    return q


def _choice(name: str, key: str, t: str, v: list[Any]) -> Param:
    if not v:
        raise _invalid(name, "choice needs at least one option")
    nested = [isinstance(o, dict) and "_name" in o for o in v]
    if any(nested):
        if not all(nested):
            raise _invalid(name, "mix of nested (_name) and plain options")
        names = [o["_name"] for o in v]
        repeated = sorted({repr(n) for n in names if names.count(n) > 1})
        if repeated:
            # The trial tells the options apart by _name alone, and the study names their parameters by it.
            raise _invalid(name, f"nested choice options need distinct _name values, got {', '.join(repeated)} "
                                 "more than once")
        children = tuple(
            tuple(_compile_one(k, s, f"{name}/{o['_name']}/") for k, s in o.items() if k != "_name") for o in v)
        return Param(name, key, t, CategoricalDistribution(list(range(len(v)))),
                     lambda i: i, lambda val: names.index(val["_name"] if isinstance(val, dict) else val),
                     children=children, option_names=tuple(names))
    # Optuna stores a categorical value as the index of the first option equal to it, so values equal
    # under == (1, 1.0, True) or repeated ones are drawn by index, each option as likely as in NNI.
    if all(_is_scalar(o) for o in v) and len(set(v)) == len(v):
        return Param(name, key, t, CategoricalDistribution(v), lambda x: x, lambda x: x)
    options = list(v)
    return Param(name, key, t, CategoricalDistribution(list(range(len(v)))),
                 lambda i: options[i], lambda val: options.index(val))


def _randint(name: str, key: str, t: str, v: list[Any]) -> Param:
    _arity(name, t, v, 2)
    low, high = (_number(x, name, "randint bound") for x in v)
    if int(low) != low or int(high) != high:
        raise _invalid(name, f"randint bounds must be integers, got {v}")
    if low >= high:
        raise _invalid(name, f"randint needs lower < upper (upper is excluded), got {v}")
    return Param(name, key, t, IntDistribution(int(low), int(high) - 1), int, int)


def _uniform(name: str, key: str, t: str, v: list[Any]) -> Param:
    _arity(name, t, v, 3 if t.startswith("q") else 2)
    low, high = float(_number(v[0], name, "low")), float(_number(v[1], name, "high"))
    # low == high is a single point in NNI (its random and TPE tuners always yield low); only randint,
    # whose upper bound is exclusive, is empty there.
    if low > high:
        raise _invalid(name, f"{t} needs low <= high, got {v[:2]}")
    log = "log" in t
    if log and low <= 0:
        raise _invalid(name, f"{t} needs low > 0, got {v[0]}")
    dist = FloatDistribution(low, high, log=log)
    if t.startswith("q"):
        q = _step(name, v[2])
        return Param(name, key, t, dist, lambda x: _quantize(x, q, low, high),
                     lambda x: min(max(float(x), low), high))
    return Param(name, key, t, dist, float, float)


def _normal(name: str, key: str, t: str, v: list[Any]) -> Param:
    _arity(name, t, v, 3 if t.startswith("q") else 2)
    mu, sigma = _number(v[0], name, "mu"), _number(v[1], name, "sigma")
    if sigma <= 0:
        raise _invalid(name, f"sigma must be > 0, got {sigma}")
    q = _step(name, v[2]) if t.startswith("q") else None
    log = "log" in t

    def to_value(u: float) -> float:
        x = mu + sigma * _STD_NORMAL.inv_cdf(u)
        if log:
            x = math.exp(x)
        return _quantize(x, q) if q is not None else x

    def to_param(val: float) -> float:
        x = math.log(max(val, _EPS)) if log else val
        return min(max(_STD_NORMAL.cdf((x - mu) / sigma), _EPS), 1 - _EPS)

    return Param(name, key, t, FloatDistribution(_EPS, 1 - _EPS), to_value, to_param)


_COMPILERS: dict[str, Callable[[str, str, str, list[Any]], Param]] = {
    "choice": _choice, "randint": _randint,
    "uniform": _uniform, "quniform": _uniform, "loguniform": _uniform, "qloguniform": _uniform,
    "normal": _normal, "qnormal": _normal, "lognormal": _normal, "qlognormal": _normal,
}


def _compile_one(key: str, spec: Any, prefix: str) -> Param:
    name = f"{prefix}{key}"
    if not isinstance(spec, dict) or "_type" not in spec or "_value" not in spec:
        raise SearchSpaceError(f"search space parameter {name!r} must be a dict with _type and _value, got {spec!r}")
    t, v = spec["_type"], spec["_value"]
    if not isinstance(v, (list, tuple)):
        raise _invalid(name, f"_value must be a list, got {v!r}")
    if not isinstance(t, str) or t not in _COMPILERS:
        raise _invalid(name, f"unknown _type {t!r}; known: {', '.join(_COMPILERS)}")
    return _COMPILERS[t](name, key, t, list(v))


def compile_space(search_space: dict[str, Any], prefix: str = "") -> tuple[Param, ...]:
    """Validate an NNI search space and prepare its parameters (raises :class:`SearchSpaceError`)."""
    if not isinstance(search_space, dict):
        raise SearchSpaceError(f"the search space must be a JSON object, got {type(search_space).__name__}")
    return tuple(_compile_one(k, s, prefix) for k, s in search_space.items())


def _suggest_raw(trial: optuna.Trial, p: Param) -> Any:
    d = p.distribution
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(p.name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(p.name, d.low, d.high, log=d.log, step=d.step)
    return trial.suggest_float(p.name, d.low, d.high, log=d.log, step=d.step)


def suggest(trial: optuna.Trial, params: tuple[Param, ...]) -> dict[str, Any]:
    """Draw one configuration in NNI's format from ``trial``."""
    out: dict[str, Any] = {}
    for p in params:
        raw = _suggest_raw(trial, p)
        if p.children is not None:
            out[p.key] = {"_name": p.option_names[raw], **suggest(trial, p.children[raw])}
        else:
            out[p.key] = p.to_value(raw)
    return out


def to_optuna_params(params: tuple[Param, ...], values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """Invert :func:`suggest`: NNI values -> (Optuna params, distributions), for ``import_data``."""
    out: dict[str, Any] = {}
    dists: dict[str, BaseDistribution] = {}
    for p in params:
        if p.key not in values:
            raise SearchSpaceError(f"imported parameters lack {p.key!r}")
        raw = p.to_param(values[p.key])
        out[p.name] = raw
        dists[p.name] = p.distribution
        if p.children is not None:
            sub_out, sub_dists = to_optuna_params(p.children[raw], values[p.key])
            out.update(sub_out)
            dists.update(sub_dists)
    return out, dists
