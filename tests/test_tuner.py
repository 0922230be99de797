"""The Optuna tuner: NNI's search-space semantics, one Optuna trial per NNI parameter id, storage."""
from __future__ import annotations

import math
import statistics

import optuna
import pytest
from optuna.trial import TrialState

from nni_visplugin.tuners import OptunaTuner, SearchSpaceError

SPACE = {
    "c": {"_type": "choice", "_value": ["a", 2, 0.5]},
    "objs": {"_type": "choice", "_value": [[1, 2], {"k": 1}]},
    "ri": {"_type": "randint", "_value": [3, 6]},
    "u": {"_type": "uniform", "_value": [-1.0, 1.0]},
    "qu": {"_type": "quniform", "_value": [0.0, 10.0, 2.5]},
    "lu": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
    "qlu": {"_type": "qloguniform", "_value": [1.0, 100.0, 5.0]},
    "n": {"_type": "normal", "_value": [3.0, 2.0]},
    "qn": {"_type": "qnormal", "_value": [0.0, 10.0, 4.0]},
    "ln": {"_type": "lognormal", "_value": [0.0, 0.5]},
    "qln": {"_type": "qlognormal", "_value": [1.0, 0.5, 0.5]},
}


def _draw(space, n, sampler="random"):
    tuner = OptunaTuner(sampler=sampler, seed=1)
    tuner.update_search_space(space)
    return tuner, [tuner.generate_parameters(i) for i in range(n)]


def test_every_nni_type_follows_nni_semantics():
    _, draws = _draw(SPACE, 1500)
    col = {k: [d[k] for d in draws] for k in SPACE}
    assert set(map(repr, col["c"])) == {"'a'", "2", "0.5"}
    assert {repr(v) for v in col["objs"]} == {"[1, 2]", "{'k': 1}"}
    assert set(col["ri"]) == {3, 4, 5}  # upper bound excluded
    assert all(-1 <= v <= 1 for v in col["u"])
    assert set(col["qu"]) <= {0.0, 2.5, 5.0, 7.5, 10.0} and len(set(col["qu"])) == 5
    assert all(1e-4 <= v <= 1e-1 for v in col["lu"])
    # log-uniform: about half of the draws below the geometric midpoint
    assert 0.4 < sum(v < math.sqrt(1e-4 * 1e-1) for v in col["lu"]) / len(draws) < 0.6
    assert all(1 <= v <= 100 and (v == 1 or v == 100 or v % 5 == 0) for v in col["qlu"])
    assert statistics.mean(col["n"]) == pytest.approx(3.0, abs=0.2)
    assert statistics.stdev(col["n"]) == pytest.approx(2.0, abs=0.2)
    assert all(v % 4 == 0 for v in col["qn"])
    assert all(v > 0 for v in col["ln"])
    assert statistics.median(col["ln"]) == pytest.approx(1.0, abs=0.1)  # exp(mu)
    assert all(abs(v / 0.5 - round(v / 0.5)) < 1e-9 for v in col["qln"])


def test_nested_choice_samples_the_chosen_subspace():
    space = {"opt": {"_type": "choice", "_value": [
        {"_name": "sgd", "lr": {"_type": "uniform", "_value": [0.1, 0.2]}},
        {"_name": "adam", "beta": {"_type": "choice", "_value": [0.9, 0.99]}},
    ]}}
    _, draws = _draw(space, 40)
    names = {d["opt"]["_name"] for d in draws}
    assert names == {"sgd", "adam"}
    for d in draws:
        if d["opt"]["_name"] == "sgd":
            assert set(d["opt"]) == {"_name", "lr"} and 0.1 <= d["opt"]["lr"] <= 0.2
        else:
            assert set(d["opt"]) == {"_name", "beta"} and d["opt"]["beta"] in (0.9, 0.99)


@pytest.mark.parametrize("space, message", [
    ({"x": {"_type": "choice", "_value": []}}, "'x'.*at least one"),
    ({"x": {"_type": "uniform", "_value": [2, 1]}}, "'x'.*low <= high"),  # low == high is a point in NNI
    ({"x": {"_type": "randint", "_value": [5, 2]}}, "'x'.*lower < upper"),
    ({"x": {"_type": "loguniform", "_value": [0, 1]}}, "'x'.*low > 0"),
    ({"x": {"_type": "gaussian", "_value": [0, 1]}}, "'x'.*unknown _type 'gaussian'"),
    ({"x": {"_type": "normal", "_value": [0, -1]}}, "'x'.*sigma"),
    ({"x": {"_type": "quniform", "_value": [0, 1, 0]}}, "'x'.*q must be > 0"),
    ({"x": {"_type": "uniform", "_value": [0]}}, "'x'.*takes 2 values"),
    ({"x": 3}, "'x'.*_type and _value"),
])
def test_invalid_spaces_are_rejected_naming_the_parameter(space, message):
    with pytest.raises(SearchSpaceError, match=message):
        OptunaTuner().update_search_space(space)


def test_results_reach_their_own_trial_whatever_the_order():
    """Concurrent trials finish out of order: each value must be told to the trial that drew its params."""
    tuner, _ = _draw({"u": {"_type": "uniform", "_value": [0, 1]}}, 0)
    params = {i: tuner.generate_parameters(i) for i in (10, 11, 12, 13)}
    # The result of each trial is a function of its own parameters, so a mix-up is visible.
    for pid in (12, 10, 13):
        tuner.receive_trial_result(pid, params[pid], {"default": params[pid]["u"] * 2, "other": 1.0})
    tuner.trial_end(11, success=False)
    for pid in (12, 10, 13):
        tuner.trial_end(pid, success=True)
    trials = {t.user_attrs["nni_parameter_id"]: t for t in tuner.study.get_trials()}
    for pid in (10, 12, 13):
        assert trials[pid].state == TrialState.COMPLETE
        assert trials[pid].value == pytest.approx(trials[pid].params["u"] * 2)
        assert trials[pid].user_attrs["result_other"] == 1.0
    assert trials[11].state == TrialState.FAIL


def test_success_without_a_result_and_nan_results_are_failures():
    tuner, _ = _draw({"u": {"_type": "uniform", "_value": [0, 1]}}, 0)
    p0, p1, p2 = tuner.generate_parameters(0), tuner.generate_parameters(1), tuner.generate_parameters(2)
    tuner.trial_end(0, success=True)
    tuner.trial_end(2, success=True)
    # NNI delivers the end of a trial and its final result through two queues: a result that comes
    # after the end still counts ...
    tuner.receive_trial_result(2, p2, 0.5)
    tuner.receive_trial_result(1, p1, float("nan"))
    states = [t.state for t in tuner.study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.COMPLETE]
    # ... even once NNI has asked for the next trial (it can deliver the result after that) ...
    tuner.generate_parameters(3)
    states = [t.state for t in tuner.study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.COMPLETE, TrialState.RUNNING]
    # ... until the experiment ends without it.
    tuner._on_exit()
    states = [t.state for t in tuner.study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL]


def test_import_data_adds_each_record_once():
    tuner, _ = _draw(SPACE, 0)
    tuner2, draws = _draw(SPACE, 3)
    data = [{"parameter": d, "value": {"default": 0.1 * i}} for i, d in enumerate(draws)]
    tuner.import_data(data)
    tuner.import_data(data)  # resume imports the same records again
    done = tuner.study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.value for t in done) == pytest.approx([0.0, 0.1, 0.2])
    # and the imported history informs the sampler: the next draw works
    assert set(tuner.generate_parameters(99)) == set(SPACE)


def test_minimize_and_samplers():
    for sampler in ("tpe", "random", "cmaes", "qmc"):
        tuner = OptunaTuner(optimize_mode="minimize", sampler=sampler, seed=0)
        tuner.update_search_space({"u": {"_type": "uniform", "_value": [0, 1]},
                                   "c": {"_type": "choice", "_value": [1, 2]}})
        for i in range(6):
            p = tuner.generate_parameters(i)
            tuner.receive_trial_result(i, p, p["u"])
        assert tuner.study.direction == optuna.study.StudyDirection.MINIMIZE
        assert tuner.study.best_value == min(t.value for t in tuner.study.trials)
    with pytest.raises(ValueError, match="sampler"):
        OptunaTuner(sampler="bayes")
    with pytest.raises(ValueError, match="optimize_mode"):
        OptunaTuner(optimize_mode="max")


def test_study_persists_in_sqlite_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    tuner = OptunaTuner(storage=url, study_name="s", seed=0)
    tuner.update_search_space({"u": {"_type": "uniform", "_value": [0, 1]}})
    p = tuner.generate_parameters(0)
    tuner.receive_trial_result(0, p, 0.5)
    again = optuna.load_study(study_name="s", storage=url)
    assert [t.value for t in again.trials] == [0.5]
    assert again.trials[0].params["u"] == p["u"]


def test_default_storage_is_a_sqlite_file_in_the_experiment_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NNI_LOG_DIRECTORY", str(tmp_path / "abc123" / "log"))
    (tmp_path / "abc123" / "log").mkdir(parents=True)
    tuner = OptunaTuner()
    assert tuner.study.study_name == "nni-abc123"
    assert (tmp_path / "abc123" / "optuna.db").exists()


def test_sqlite_study_locked_by_a_concurrent_writer_waits_instead_of_failing(tmp_path):
    """Another process holds the SQLite file's write lock for 8 s, longer than SQLite's default 5 s wait:
    the tuner's tell waits and lands instead of failing with "database is locked"."""
    import sqlite3
    import subprocess
    import sys
    import time

    db = tmp_path / "study.db"
    tuner = OptunaTuner(storage=f"sqlite:///{db}", study_name="s", seed=0)
    tuner.update_search_space({"u": {"_type": "uniform", "_value": [0, 1]}})
    p = tuner.generate_parameters(0)
    locker = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(8); c.execute('COMMIT')"), str(db)],
        stdout=subprocess.PIPE, text=True)
    assert locker.stdout.readline().strip() == "locked"
    start = time.time()
    tuner.receive_trial_result(0, p, 0.75)
    waited = time.time() - start
    locker.wait(timeout=30)
    assert waited > 5  # it really met the lock, past the default timeout
    assert [t.value for t in optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials] == [0.75]
    conn = sqlite3.connect(db)
    assert conn.execute("select count(*) from trials").fetchone()[0] == 1
    conn.close()


def test_storage_password_never_reaches_the_log(caplog):
    from nni_visplugin.hpo.study import redact

    assert redact("postgresql://user:s3cret@127.0.0.1:5432/db") == "postgresql://user:***@127.0.0.1:5432/db"
    with caplog.at_level("INFO"):
        OptunaTuner()
    assert "memory" in caplog.text


def test_storage_with_a_password_is_refused_and_storage_env_is_read(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="holds a password.*storage_env"):
        OptunaTuner(storage="postgresql://user:s3cret@127.0.0.1:5432/db")
    with pytest.raises(ValueError, match="NNI_VISPLUGIN_TEST_NO_SUCH_VAR is not set"):
        OptunaTuner(storage_env="NNI_VISPLUGIN_TEST_NO_SUCH_VAR")
    with pytest.raises(ValueError, match="either storage or storage_env"):
        OptunaTuner(storage="sqlite:///x.db", storage_env="X")
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MY_STUDY_URL", url)
    tuner = OptunaTuner(storage_env="MY_STUDY_URL", study_name="from-env")
    assert tuner.storage_url == url
    assert optuna.load_study(study_name="from-env", storage=url).study_name == "from-env"


MULTI = {"default": "maximize", "num_params": "minimize"}


def test_multi_objective_study_gets_every_objective_of_its_own_result():
    for sampler in ("nsga2", "motpe", "tpe", "nsga3", "random"):
        tuner = OptunaTuner(objectives=MULTI, sampler=sampler, seed=0)
        tuner.update_search_space({"w": {"_type": "randint", "_value": [1, 50]}})
        params = {i: tuner.generate_parameters(i) for i in range(10)}
        for i in reversed(range(10)):  # out of order, as concurrent trials report
            w = params[i]["w"]
            tuner.receive_trial_result(i, params[i], {"default": 1 - 1 / w, "num_params": 1000 * w, "x": 3})
        trials = tuner.study.get_trials()
        assert all(t.state == TrialState.COMPLETE for t in trials)
        for t in trials:
            w = t.params["w"]
            assert t.values == [pytest.approx(1 - 1 / w), 1000 * w] and t.user_attrs["result_x"] == 3
        assert tuner.study.metric_names == ["default", "num_params"]
        front = {t.number for t in tuner.study.best_trials}
        assert front == {t.number for t in trials}  # every trade-off here is Pareto-optimal


def test_multi_objective_results_missing_an_objective_fail():
    tuner = OptunaTuner(objectives=MULTI, sampler="nsga2", seed=0)
    tuner.update_search_space({"w": {"_type": "randint", "_value": [1, 50]}})
    p = [tuner.generate_parameters(i) for i in range(3)]
    tuner.receive_trial_result(0, p[0], 0.9)  # a bare number has no num_params
    tuner.receive_trial_result(1, p[1], {"default": 0.9})
    tuner.receive_trial_result(2, p[2], {"default": 0.9, "num_params": float("inf")})
    assert [t.state for t in tuner.study.get_trials()] == [TrialState.FAIL] * 3


@pytest.mark.parametrize("kwargs, message", [
    ({"objectives": {"default": "maximize"}, "optimize_mode": "maximize"}, "leave out optimize_mode and metric"),
    ({"objectives": ["default", "num_params"]}, "objectives must map result keys"),
    ({"objectives": {"default": "up", "num_params": "minimize"}}, "objectives.default: must be maximize or minimize"),
    ({"objectives": MULTI, "sampler": "cmaes"}, "sampler 'cmaes' optimises one objective"),
    ({"sampler": "no_such_module:Sampler"}, "cannot import 'no_such_module:Sampler'"),
    ({"sampler_args": [1]}, "sampler_args must be a mapping"),
])
def test_bad_tuner_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptunaTuner(**kwargs)


def test_a_study_with_other_objectives_is_not_reused(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    OptunaTuner(storage=url, study_name="s")
    with pytest.raises(ValueError, match="already exists with other objectives"):
        OptunaTuner(storage=url, study_name="s", objectives=MULTI)


def test_a_custom_sampler_class_by_name_gets_the_seed():
    tuner = OptunaTuner(sampler="optuna.samplers:RandomSampler", seed=5)
    other = OptunaTuner(sampler="random", seed=5)
    for t in (tuner, other):
        t.update_search_space({"u": {"_type": "uniform", "_value": [0, 1]}})
    assert [tuner.generate_parameters(i) for i in range(3)] == [other.generate_parameters(i) for i in range(3)]


def test_trials_still_open_when_the_experiment_stops_are_closed():
    tuner, _ = _draw({"u": {"_type": "uniform", "_value": [0, 1]}}, 0)
    p = [tuner.generate_parameters(i) for i in range(3)]
    tuner.receive_trial_result(0, p[0], 0.5)
    tuner._on_exit()  # NNI calls it when the dispatcher ends (experiment done or stopped)
    assert [t.state for t in tuner.study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
