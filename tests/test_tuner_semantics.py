"""The tuner's draws against NNI 3.0's definition of each search-space type.

NNI's definition (``nni/common/hpo_utils/formatting.py`` and ``nni/algorithms/hpo/random_tuner.py``):
``choice`` picks one listed value (a nested choice yields ``{"_name": ..., <its sub-space>}``);
``randint [lower, upper)`` an integer, upper excluded; ``uniform`` a float in [low, high];
``loguniform`` ``exp`` of a float uniform in [log low, log high]; the ``q`` forms round to a
multiple of q, ``round(x / q) * q``, and the uniform ones then clip to [low, high]; ``normal`` is
N(mu, sigma), ``lognormal`` ``exp`` of it, their ``q`` forms rounded and not clipped. A range with
low == high is a single point. Every expected value below is worked out here by hand or from the
definition, not from the tuner's code.
"""
from __future__ import annotations

import json
import math
import random
import statistics
from collections import Counter

import pytest

from nni_visplugin.hpo.space import compile_space
from nni_visplugin.tuners import OptunaTuner, SearchSpaceError

N = 2000


def _draws(spec, n=N, sampler="random", seed=1):
    tuner = OptunaTuner(sampler=sampler, seed=seed)
    tuner.update_search_space({"x": spec})
    return [tuner.generate_parameters(i)["x"] for i in range(n)]


def _phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _freq(values, predicate):
    return sum(map(predicate, values)) / len(values)


def _near(p_hat, p, n=N):
    """Within five standard errors of a proportion p over n draws."""
    return abs(p_hat - p) <= 5 * math.sqrt(p * (1 - p) / n)


def _multiple(v, q):
    return abs(v / q - round(v / q)) < 1e-9


def test_choice_yields_exactly_the_listed_values_evenly():
    values = ["relu", 3, 0.25, True, None]
    got = _draws({"_type": "choice", "_value": values})
    # repr keeps apart what == would merge (True == 1, 3 == 3.0)
    counts = Counter(repr(v) for v in got)
    assert set(counts) == {"'relu'", "3", "0.25", "True", "None"}
    assert all(_near(c / N, 1 / 5) for c in counts.values())


def test_nested_choice_yields_the_name_and_only_the_chosen_subspace():
    space = {"_type": "choice", "_value": [
        {"_name": "sgd", "lr": {"_type": "loguniform", "_value": [1e-3, 1e-1]},
         "momentum": {"_type": "choice", "_value": [0.0, 0.9]}},
        {"_name": "adam", "beta1": {"_type": "uniform", "_value": [0.8, 0.95]}},
        {"_name": "none"},
    ]}
    got = _draws(space, n=600)
    names = Counter(d["_name"] for d in got)
    assert set(names) == {"sgd", "adam", "none"} and all(_near(c / 600, 1 / 3, 600) for c in names.values())
    for d in got:
        if d["_name"] == "sgd":
            assert set(d) == {"_name", "lr", "momentum"}
            assert 1e-3 <= d["lr"] <= 1e-1 and d["momentum"] in (0.0, 0.9)
        elif d["_name"] == "adam":
            assert set(d) == {"_name", "beta1"} and 0.8 <= d["beta1"] <= 0.95
        else:
            assert d == {"_name": "none"}


def test_randint_excludes_the_upper_bound():
    got = _draws({"_type": "randint", "_value": [-2, 3]})
    assert all(type(v) is int for v in got)
    counts = Counter(got)
    assert set(counts) == {-2, -1, 0, 1, 2}
    assert all(_near(c / N, 1 / 5) for c in counts.values())


def test_uniform_stays_in_the_closed_range_evenly():
    got = _draws({"_type": "uniform", "_value": [-3.0, 5.0]})
    assert all(type(v) is float and -3.0 <= v <= 5.0 for v in got)
    # each quarter of the range holds a quarter of the draws
    for a in (-3.0, -1.0, 1.0, 3.0):
        assert _near(_freq(got, lambda v: a <= v < a + 2.0), 0.25)


def test_quniform_rounds_to_multiples_of_q_then_clips():
    # [0.3, 10], q = 2: x in [0.3, 1) rounds to 0, clipped up to 0.3; x in [9, 10] rounds to 10;
    # every other multiple k*q takes the x within 1 of it.
    got = _draws({"_type": "quniform", "_value": [0.3, 10.0, 2.0]})
    width = 10.0 - 0.3
    expected = {0.3: 0.7 / width, 2.0: 2 / width, 4.0: 2 / width, 6.0: 2 / width, 8.0: 2 / width, 10.0: 1 / width}
    counts = Counter(got)
    assert set(counts) == set(expected)
    assert all(_near(counts[v] / N, p) for v, p in expected.items())


def test_loguniform_is_uniform_in_log_space():
    low, high = 1e-5, 1e-1
    got = _draws({"_type": "loguniform", "_value": [low, high]})
    assert all(0 < low <= v <= high for v in got)
    # each decade holds a quarter of the draws
    for e in (-5, -4, -3, -2):
        assert _near(_freq(got, lambda v: 10.0 ** e <= v < 10.0 ** (e + 1)), 0.25)


def test_qloguniform_rounds_the_log_uniform_draw_then_clips():
    # [1, 100], q = 5: exp(u) < 2.5 rounds to 0 and is clipped up to 1, with probability
    # log(2.5) / log(100); exp(u) in [97.5, 100] rounds to 100.
    got = _draws({"_type": "qloguniform", "_value": [1.0, 100.0, 5.0]})
    assert set(got) <= {1.0} | {5.0 * k for k in range(1, 21)}
    assert all(v > 0 for v in got)
    assert _near(_freq(got, lambda v: v == 1.0), math.log(2.5) / math.log(100))
    assert _near(_freq(got, lambda v: v == 100.0), (math.log(100) - math.log(97.5)) / math.log(100))


def test_normal_has_mean_mu_and_std_sigma_and_no_bounds():
    mu, sigma = 3.0, 2.0
    got = _draws({"_type": "normal", "_value": [mu, sigma]})
    assert abs(statistics.mean(got) - mu) < 5 * sigma / math.sqrt(N)
    assert abs(statistics.stdev(got) - sigma) < 5 * sigma / math.sqrt(2 * N)
    assert _near(_freq(got, lambda v: abs(v - mu) > 2 * sigma), 2 * (1 - _phi(2.0)))


def test_qnormal_rounds_to_multiples_of_q_without_clipping():
    mu, sigma, q = 1.0, 10.0, 2.0
    got = _draws({"_type": "qnormal", "_value": [mu, sigma, q]})
    assert all(_multiple(v, q) for v in got)
    # P(value == 0) = P(-1 <= x < 1); rounding adds variance q^2 / 12 on average
    assert _near(_freq(got, lambda v: v == 0), _phi((1 - mu) / sigma) - _phi((-1 - mu) / sigma))
    assert abs(statistics.mean(got) - mu) < 5 * sigma / math.sqrt(N)
    assert abs(statistics.stdev(got) - math.sqrt(sigma ** 2 + q ** 2 / 12)) < 5 * sigma / math.sqrt(2 * N)
    assert min(got) < mu - 2 * sigma and max(got) > mu + 2 * sigma


def test_lognormal_is_exp_of_normal():
    mu, sigma = -1.0, 0.5
    got = _draws({"_type": "lognormal", "_value": [mu, sigma]})
    assert all(v > 0 for v in got)
    logs = [math.log(v) for v in got]
    assert abs(statistics.mean(logs) - mu) < 5 * sigma / math.sqrt(N)
    assert abs(statistics.stdev(logs) - sigma) < 5 * sigma / math.sqrt(2 * N)


def test_qlognormal_rounds_exp_of_normal_to_multiples_of_q():
    mu, sigma, q = 0.0, 1.0, 1.0
    got = _draws({"_type": "qlognormal", "_value": [mu, sigma, q]})
    assert all(v >= 0 and _multiple(v, q) for v in got)
    # NNI does not clip: exp(x) < q/2 rounds to 0; exp(x) in [0.5, 1.5) rounds to 1
    assert _near(_freq(got, lambda v: v == 0), _phi((math.log(0.5) - mu) / sigma))
    assert _near(_freq(got, lambda v: v == 1), _phi((math.log(1.5) - mu) / sigma) - _phi((math.log(0.5) - mu) / sigma))


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "qmc", "random"])
@pytest.mark.parametrize("spec, value", [
    ({"_type": "uniform", "_value": [99.9, 99.9]}, 99.9),
    ({"_type": "loguniform", "_value": [1, 1]}, 1.0),
    ({"_type": "qloguniform", "_value": [2, 2, 1]}, 2.0),
    ({"_type": "quniform", "_value": [2.5, 2.5, 1]}, 2.5),  # round(2.5) = 2, clipped back to 2.5
    ({"_type": "quniform", "_value": [3, 3, 2]}, 3.0),  # rounds to 4, clipped back to 3
])
def test_a_range_with_low_equal_to_high_always_yields_that_value(spec, value, sampler):
    tuner = OptunaTuner(sampler=sampler, seed=0)
    tuner.update_search_space({"x": spec, "u": {"_type": "uniform", "_value": [0, 1]}})
    for i in range(15):  # past TPE's startup trials
        p = tuner.generate_parameters(i)
        assert p["x"] == value
        tuner.receive_trial_result(i, p, p["u"])
    other = OptunaTuner(sampler=sampler, seed=0)
    other.update_search_space({"x": spec, "u": {"_type": "uniform", "_value": [0, 1]}})
    other.import_data([{"parameter": p, "value": 0.5}])
    assert other.generate_parameters(0)["x"] == value


def test_bounds_and_quantisation_hold_under_tpe_too():
    space = {
        "ri": {"_type": "randint", "_value": [3, 6]},
        "qu": {"_type": "quniform", "_value": [0.3, 10.0, 2.0]},
        "qlu": {"_type": "qloguniform", "_value": [1.0, 100.0, 5.0]},
        "qn": {"_type": "qnormal", "_value": [0.0, 10.0, 4.0]},
        "ln": {"_type": "lognormal", "_value": [0.0, 0.5]},
    }
    tuner = OptunaTuner(sampler="tpe", seed=3)
    tuner.update_search_space(space)
    for i in range(40):
        p = tuner.generate_parameters(i)
        assert p["ri"] in (3, 4, 5)
        assert p["qu"] in (0.3, 2.0, 4.0, 6.0, 8.0, 10.0)
        assert p["qlu"] == 1.0 or (p["qlu"] in {5.0 * k for k in range(1, 21)})
        assert _multiple(p["qn"], 4.0) and p["ln"] > 0
        tuner.receive_trial_result(i, p, p["qu"] - p["ri"])


@pytest.mark.parametrize("spec, message", [
    ({"_type": "randint", "_value": [0, 0]}, r"randint needs lower < upper \(upper is excluded\)"),  # [0, 0) is empty
    ({"_type": "randint", "_value": [5, 2]}, "randint needs lower < upper"),
    ({"_type": "uniform", "_value": [2.0, 1.0]}, "uniform needs low <= high"),
    ({"_type": "quniform", "_value": [3, 1, 1]}, "quniform needs low <= high"),
    ({"_type": "loguniform", "_value": [1, 0.5]}, "loguniform needs low <= high"),
    ({"_type": "qloguniform", "_value": [4, 2, 1]}, "qloguniform needs low <= high"),
    ({"_type": "loguniform", "_value": [0, 0]}, "needs low > 0"),
    ({"_type": "choice", "_value": []}, "at least one option"),
    ({"_type": "beta", "_value": [1, 2]}, "unknown _type 'beta'"),
])
def test_refused_spaces_raise_one_line_naming_the_key(spec, message):
    with pytest.raises(SearchSpaceError, match=message) as err:
        OptunaTuner().update_search_space({"lr_max": spec})
    assert "'lr_max'" in str(err.value) and "\n" not in str(err.value)


def test_a_refused_parameter_inside_a_nested_choice_is_named_by_its_path():
    space = {"opt": {"_type": "choice", "_value": [
        {"_name": "sgd", "lr": {"_type": "randint", "_value": [0, 0]}}]}}
    with pytest.raises(SearchSpaceError, match="'opt/sgd/lr'") as err:
        OptunaTuner().update_search_space(space)
    assert "\n" not in str(err.value)


def test_the_q_types_yield_floats_even_for_integer_arguments():
    # NNI turns q and the bounds into floats, so round(x / q) * q is a float: 3.0, never 3
    for spec in ({"_type": "quniform", "_value": [0, 10, 1]}, {"_type": "qloguniform", "_value": [1, 100, 1]},
                 {"_type": "qnormal", "_value": [0, 10, 4]}, {"_type": "qlognormal", "_value": [0, 1, 1]},
                 {"_type": "quniform", "_value": [3, 3, 2]}):
        assert {type(v) for v in _draws(spec, n=50)} == {float}, spec


def test_choice_values_equal_under_eq_stay_apart_in_the_study():
    """1, 1.0 and True are three options (NNI picks one by index); what the study records must tell
    them apart, or a resumed study and TPE would see 1 where the trial got True."""
    tuner = OptunaTuner(sampler="random", seed=0)
    tuner.update_search_space({"c": {"_type": "choice", "_value": [1, 1.0, True]}})
    for i in range(60):
        tuner.receive_trial_result(i, tuner.generate_parameters(i), 0.5)
    drawn = {}
    for t in tuner.study.get_trials():
        got = json.loads(t.user_attrs["nni_params"])["c"]
        drawn.setdefault(repr(t.params["c"]), set()).add(repr(got))
    assert set().union(*drawn.values()) == {"1", "1.0", "True"}
    assert all(len(got) == 1 for got in drawn.values())  # one recorded value per drawn option


# NNI's own tuner tests (test/ut/sdk/test_builtin_tuners.py with assets/search_space.json) run every
# built-in tuner over these spaces, one at a time and all together, reporting a random result for
# each trial. The same cases are run here; only the names with "fail" must be refused.
NNI_CASES = {
    "choice_str": {"_type": "choice", "_value": ["cat", "dog", "elephant", "cow", "sheep", "panda"]},
    "choice_int": {"_type": "choice", "_value": [42, 43, -1]},
    "choice_mixed": {"_type": "choice", "_value": [0.3, "cat", 1, None]},
    "choice_float": {"_type": "choice", "_value": [0.3, 1, 2.0]},
    "choice_single": {"_type": "choice", "_value": [1]},
    "randint_ok": {"_type": "randint", "_value": [-2, 3]},
    "randint_single": {"_type": "randint", "_value": [10, 11]},
    "randint_fail_equal": {"_type": "randint", "_value": [0, 0]},
    "uniform_ok": {"_type": "uniform", "_value": [-1.0, 1.5]},
    "uniform_equal": {"_type": "uniform", "_value": [99.9, 99.9]},
    "quniform_ok": {"_type": "quniform", "_value": [0.0, 10.0, 2.5]},
    "quniform_clip": {"_type": "quniform", "_value": [2.0, 10.0, 5.0]},
    "quniform_clip_2": {"_type": "quniform", "_value": [-5.5, -0.5, 6]},
    "loguniform_ok": {"_type": "loguniform", "_value": [0.001, 100]},
    "loguniform_equal": {"_type": "loguniform", "_value": [1, 1]},
    "qloguniform_ok": {"_type": "qloguniform", "_value": [0.001, 100, 1]},
    "qloguniform_equal": {"_type": "qloguniform", "_value": [2, 2, 1]},
    "normal_ok": {"_type": "normal", "_value": [-1.0, 5.0]},
    "qnormal_ok": {"_type": "qnormal", "_value": [-1.5, 5.0, 0.1]},
    "lognormal_ok": {"_type": "lognormal", "_value": [-1.0, 5.0]},
    "qlognormal_ok": {"_type": "qlognormal", "_value": [-1.5, 5.0, 0.1]},
}
# The values each case can take, worked out from the definitions: quniform [2, 10, 5] rounds to
# 0, 5 or 10 and clips 0 up to 2; quniform [-5.5, -0.5, 6] rounds to -6 or 0, clipped to the bounds.
NNI_CASE_VALUES = {
    "randint_ok": {-2, -1, 0, 1, 2}, "randint_single": {10}, "uniform_equal": {99.9},
    "quniform_ok": {0.0, 2.5, 5.0, 7.5, 10.0}, "quniform_clip": {2.0, 5.0, 10.0}, "quniform_clip_2": {-5.5, -0.5},
    "loguniform_equal": {1.0}, "qloguniform_equal": {2.0},
}


def _fits_nni_case(name, v):
    t, args = NNI_CASES[name]["_type"], NNI_CASES[name]["_value"]
    if t == "choice":
        return repr(v) in {repr(a) for a in args}
    if name in NNI_CASE_VALUES and v not in NNI_CASE_VALUES[name]:
        return False
    if t == "randint":
        return type(v) is int and args[0] <= v < args[1]
    if type(v) is not float or not math.isfinite(v):
        return False
    if t.endswith("uniform") and not args[0] <= v <= args[1]:
        return False
    if t.startswith("q") and v not in args[:2] and not _multiple(v, args[2]):
        return False
    return (v > 0 if t in ("loguniform", "qloguniform", "lognormal") else
            v >= 0 if t == "qlognormal" else True)  # round(exp(x) / q) * q is 0 below q / 2


def _run_like_nni(space, sampler, rounds=2, per_round=25):
    tuner = OptunaTuner(sampler=sampler, seed=7)
    tuner.update_search_space(space)
    rng = random.Random(0)
    for r in range(rounds):
        batch = {pid: tuner.generate_parameters(pid) for pid in range(r * per_round, (r + 1) * per_round)}
        for pid, params in batch.items():
            assert set(params) == set(space)
            bad = {k: v for k, v in params.items() if not _fits_nni_case(k, v)}
            assert not bad, bad
            tuner.receive_trial_result(pid, params, rng.uniform(-100, 100))
            tuner.trial_end(pid, True)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
@pytest.mark.parametrize("name", sorted(NNI_CASES))
def test_nni_builtin_tuner_cases_one_at_a_time(name, sampler):
    if "fail" in name:
        with pytest.raises(SearchSpaceError, match=repr(name)):
            OptunaTuner(sampler=sampler).update_search_space({name: NNI_CASES[name]})
    else:
        _run_like_nni({name: NNI_CASES[name]}, sampler)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_nni_builtin_tuner_cases_all_together(sampler):
    _run_like_nni({k: s for k, s in NNI_CASES.items() if "fail" not in k}, sampler, rounds=3, per_round=20)


@pytest.mark.parametrize("spec, internal, expected", [
    # NNI's test_hpo_formatting, worked by hand: (spec, NNI's internal draw x, value NNI sends)
    ({"_type": "quniform", "_value": [100, 1000, 3]}, 100.1, 100.0),  # round(33.37) * 3 = 99, clipped to 100
    ({"_type": "qnormal", "_value": [500, 200, 3]}, 100.1, 99.0),  # not clipped
    ({"_type": "qloguniform", "_value": [16.0, 128.0, 0.725]}, 4.0, 54.375),  # exp(4) / 0.725 = 75.3 -> 75
    ({"_type": "qlognormal", "_value": [3.5, 1.2, 0.725]}, 4.0, 54.375),
    ({"_type": "lognormal", "_value": [-6, 3]}, -4.6, math.exp(-4.6)),
    ({"_type": "normal", "_value": [0.7, 0.2]}, 0.7, 0.7),
    ({"_type": "uniform", "_value": [0.5, 0.9]}, 0.7, 0.7),
    ({"_type": "loguniform", "_value": [0.0001, 0.1]}, -4.6, math.exp(-4.6)),
])
def test_a_draw_becomes_the_value_nni_would_send(spec, internal, expected):
    """NNI draws x (the log for the log types, N(mu, sigma) for the normal ones) and turns it into the
    trial's value; the study's parameter for the same draw must turn into the same value. The study
    keeps uniform types on their own scale and the normal ones as the quantile of x."""
    t, args = spec["_type"], spec["_value"]
    if "normal" in t:
        raw = _phi((internal - args[0]) / args[1])
    else:
        raw = math.exp(internal) if "log" in t else internal
    (param,) = compile_space({"x": spec})
    assert param.to_value(raw) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("space", [
    "x",
    {"x": [1, 2, 3]},
    {"x": {"type": "choice", "value": ["a", "b"]}},
    {"x": {"_type": "choic", "_value": ["a"]}},
    {"x": {"_type": "choice", "_value": "ab"}},
    {"x": {"_type": "randint", "_value": [1, 2, 3]}},
    {"x": {"_type": "quniform", "_value": [0]}},
    {"x": {"_type": "uniform", "_value": ["0.1", "0.2"]}},
    {"x": {"_type": "quniform", "_value": [2, 1, 0.1]}},
    {"x": {"_type": "loguniform", "_value": [0, 1]}},
    {"x": {"_type": "normal", "_value": [0, 0]}},
])
def test_spaces_nni_validation_rejects_are_refused_in_one_line(space):
    # the bad spaces of NNI's test_hpo_validation
    with pytest.raises(SearchSpaceError) as err:
        OptunaTuner().update_search_space(space)
    message = str(err.value)
    assert "\n" not in message and ("'x'" in message or "JSON object" in message)


def test_spaces_nni_validation_accepts_are_accepted():
    # the good spaces of NNI's test_hpo_validation, the nested one with an option that has no sub-space
    good = {
        "choice": {"_type": "choice", "_value": ["a", "b"]},
        "randint": {"_type": "randint", "_value": [1, 10]},
        "uniform": {"_type": "uniform", "_value": [0, 1.0]},
        "quniform": {"_type": "quniform", "_value": [1, 10, 0.1]},
        "loguniform": {"_type": "loguniform", "_value": [0.001, 0.1]},
        "qloguniform": {"_type": "qloguniform", "_value": [0.001, 0.1, 0.001]},
        "normal": {"_type": "normal", "_value": [0, 0.1]},
        "qnormal": {"_type": "qnormal", "_value": [0.5, 0.1, 0.1]},
        "lognormal": {"_type": "lognormal", "_value": [0.0, 1]},
        "qlognormal": {"_type": "qlognormal", "_value": [-1, 1, 0.1]},
        "outer": {"_type": "choice", "_value": [
            {"_name": "empty"}, {"_name": "a", "a_1": {"_type": "choice", "_value": ["a", "b"]}}]},
    }
    tuner = OptunaTuner(sampler="random", seed=0)
    tuner.update_search_space(good)
    outer = [tuner.generate_parameters(i)["outer"] for i in range(30)]
    assert {"_name": "empty"} in outer
    assert all(o == {"_name": "empty"} or (set(o) == {"_name", "a_1"} and o["a_1"] in ("a", "b")) for o in outer)


def test_nested_options_with_the_same_name_are_refused():
    # NNI would accept them, but the trial could not tell which sub-space it got
    space = {"opt": {"_type": "choice", "_value": [
        {"_name": "sgd", "lr": {"_type": "uniform", "_value": [0, 1]}},
        {"_name": "sgd", "lr": {"_type": "choice", "_value": [0.1, 0.2]}}]}}
    with pytest.raises(SearchSpaceError, match="'opt'.*distinct _name values, got 'sgd' more than once"):
        OptunaTuner().update_search_space(space)
