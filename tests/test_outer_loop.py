"""The Optuna outer loop with the real nnictl and NNI manager: pruning, Pareto fronts, and errors of
the tuner or the assessor ending the experiment with their message.

The trials here are ``tests/nni_toys/toy_trial.py``, a stand-in for a search whose results are known
in advance, so that what the tuner and the assessor did can be checked against their definitions.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from helpers.nni import REPO, run_experiment

TOYS = REPO / "tests" / "helpers" / "nni_toys"


def _toy_config(trials: int, concurrency: int = 1, tuner_args: dict | None = None, assessor: dict | None = None,
                space: dict | None = None) -> dict:
    config = {
        "experimentName": "outer-loop",
        "trialConcurrency": concurrency,
        "maxTrialNumber": trials,
        "maxExperimentDuration": "5m",
        "trialCodeDirectory": str(TOYS),
        "trialCommand": f"{sys.executable} toy_trial.py",
        "searchSpace": space or {"x": {"_type": "uniform", "_value": [0.0, 1.0]}},
        "tuner": {"className": "nni_visplugin.tuners.OptunaTuner", "codeDirectory": str(TOYS),
                  "classArgs": {"sampler": "random", "seed": 0, **(tuner_args or {})}},
        "trainingService": {"platform": "local"},
    }
    if assessor is not None:
        config["assessor"] = {"className": "nni_visplugin.tuners.OptunaAssessor", "codeDirectory": str(TOYS),
                              "classArgs": assessor}
    return config


def _study(report) -> optuna.Study:
    exp_dir = Path(report["experiment_dir"])
    return optuna.load_study(study_name=f"nni-{report['experiment_id']}", storage=f"sqlite:///{exp_dir / 'optuna.db'}")


def _ran(report) -> dict[int, dict]:
    """parameter id -> what the trial really received, from the trials' own files."""
    files = Path(report["experiment_dir"]).glob("**/trials/*/parameters.json")
    return {r["parameter_id"]: r for r in (json.loads(f.read_text()) for f in files)}


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """The toy experiments of this module, run at the same time (each in its own directory, HOME,
    port and network namespace): they mostly wait on NNI, so together they take the time of one."""
    from concurrent.futures import ThreadPoolExecutor

    dirs = {name: tmp_path_factory.mktemp(name) for name in ("tuner", "assessor", "median", "pareto")}
    configs = {
        "tuner": _toy_config(6, tuner_args={"sampler": "faulty:ExplodingSampler",
                                            "sampler_args": {"after": 2, "stamp": str(dirs["tuner"] / "fault_time")}}),
        "assessor": _toy_config(6, assessor={"pruner": "faulty:ExplodingPruner", "pruner_args": {
            "after": 3, "stamp": str(dirs["assessor"] / "fault_time")}}),
        "median": _toy_config(6, assessor={"pruner": "median", "n_startup_trials": 2, "n_warmup_steps": 1}),
        "pareto": _toy_config(8, concurrency=2, tuner_args={
            "sampler": "nsga2", "objectives": {"default": "maximize", "num_params": "minimize"}}),
    }
    configs["pareto"]["searchSpace"]["steps"] = {"_type": "choice", "_value": [1]}
    for role in ("tuner", "assessor"):
        # The default working directory (under the test's own HOME), where `nnictl log stderr` looks.
        configs[role]["experimentWorkingDirectory"] = str(dirs[role] / "home" / "nni-experiments")
    with ThreadPoolExecutor(len(configs)) as pool:
        futures = {name: pool.submit(run_experiment, dirs[name], config, 300) for name, config in configs.items()}
        return {name: (f.result(), dirs[name]) for name, f in futures.items()}


@pytest.mark.parametrize("role", ["tuner", "assessor"])
def test_an_exception_in_the_tuner_or_assessor_ends_the_experiment_with_its_message(toy_runs, role):
    report, tmp_path = toy_runs[role]
    stamp = tmp_path / "fault_time"
    if role == "tuner":
        message = "tuner OptunaTuner.generate_parameters failed: RuntimeError: sampler exploded on purpose after 2 draws"
    else:
        message = "assessor OptunaAssessor.assess_trial failed: RuntimeError: pruner exploded on purpose after 3 calls"
    # NNI 3.0 alone keeps such an experiment RUNNING forever; here it ends ERROR within seconds.
    assert report["status"] == "ERROR", report
    assert report["status_seen_at"]["ERROR"] - float(stamp.read_text()) < 15
    assert report["errors"]  # the web UI's overview shows the error state and NNI's error line
    full = f"nni-visplugin: {message}"
    assert full in report["nnictl_log_stderr"]  # `nnictl log stderr EXPERIMENT`
    assert f"Dispatcher error: {full}" in report["web_logs"]["nnimanager.log"]  # the web UI's log panel
    assert full in report["web_logs"]["dispatcher.log"] and "Traceback" in report["web_logs"]["dispatcher.log"]
    assert not report.get("timed_out")


def test_the_assessor_prunes_exactly_the_trials_the_median_rule_names(toy_runs):
    """Trial k reports x_k * (s+1)/4 at steps s = 0..3 and ends with x_k. The median pruner with 2
    start-up trials and 1 warm-up step stops trial k at step 1 exactly when x_k is below the median
    of the x of the trials completed before it (one trial at a time, so "before" is well defined)."""
    report, _ = toy_runs["median"]
    assert report["status"] == "DONE", report
    ran = _ran(report)
    status_of = {t["trialJobId"]: t["status"] for t in report["trials"]}
    finals = {m["trialJobId"] for m in report["metrics"] if m["type"] == "FINAL"}
    optuna_trials = {t.user_attrs["nni_parameter_id"]: t for t in _study(report).get_trials()}
    assert len(ran) == len(optuna_trials) == 6
    manager_log = next(Path(report["experiment_dir"]).glob("log/nnimanager.log")).read_text()
    completed: list[float] = []
    pruned = 0
    for pid in sorted(ran):
        x = ran[pid]["parameters"]["x"]
        job = ran[pid]["trial_id"]
        should_prune = len(completed) >= 2 and x < statistics.median(completed)
        told = optuna_trials[pid]
        if should_prune:
            pruned += 1
            # Stopped by the assessor's kill. NNI 3.0's local training service labels such a trial
            # USER_CANCELED, not EARLY_STOPPED: V3asV1.cancelTrialJob (nni_node/training_service/v3/
            # compat.js) records the early-stop flag only after awaiting the trial's end, whose handler
            # has already chosen the label. The kill itself is the assessor's (next assertion).
            assert status_of[job] in ("EARLY_STOPPED", "USER_CANCELED") and job not in finals
            assert f'cancelTrialJob: "{job}"' in manager_log
            assert told.state == optuna.trial.TrialState.PRUNED
            assert told.intermediate_values == {0: pytest.approx(x / 4), 1: pytest.approx(x / 2)}
        else:
            assert status_of[job] == "SUCCEEDED" and job in finals
            assert told.state == optuna.trial.TrialState.COMPLETE and told.value == pytest.approx(x)
            assert len(told.intermediate_values) == 4
            assert f'cancelTrialJob: "{job}"' not in manager_log
            completed.append(x)
    assert pruned >= 1, "the seed drew no trial to prune: the test checks nothing"


def test_multi_objective_experiment_and_its_pareto_front(toy_runs, tmp_path):
    report, _ = toy_runs["pareto"]
    assert report["status"] == "DONE", report
    study = _study(report)
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    ran = _ran(report)
    for t in trials:  # each trial holds its own two results
        x = ran[t.user_attrs["nni_parameter_id"]]["parameters"]["x"]
        assert t.values == [pytest.approx(x), pytest.approx(1000 * (1 - x))]

    out = tmp_path / "pareto"
    shown = subprocess.run([sys.executable, "-m", "nni_visplugin.cli", "pareto", report["experiment_dir"],
                            "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    front = json.loads((out / "pareto.json").read_text())
    assert front["objectives"] == [{"name": "default", "direction": "maximize"},
                                   {"name": "num_params", "direction": "minimize"}]

    def dominated(a, b):  # b dominates a
        return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])

    expected = {t.number for t in trials if not any(dominated(t.values, o.values) for o in trials)}
    assert {p["number"] for p in front["trials"]} == expected
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for p in front["trials"]:
        assert f"{p['values'][0]:.4g}" in shown.stdout


@pytest.fixture
def postgres():
    from helpers import pg_server

    why_not = pg_server.available()
    if why_not:
        pytest.skip(f"PostgreSQL test server unavailable: {why_not}")
    from helpers.nni import free_port

    server = pg_server.PostgresServer(free_port()).start()
    yield server
    server.stop()


def test_two_experiments_share_one_postgresql_study(tmp_path, postgres):
    """Two NNI experiments, two trials at a time each, tune one study on a PostgreSQL server whose
    URL (with its password) reaches the tuners only through an environment variable."""
    from concurrent.futures import ThreadPoolExecutor

    env = {"NNI_VISPLUGIN_TEST_STUDY_URL": postgres.socket_url}
    configs = []
    for seed in (0, 1):  # different seeds: a shared study with the same seed would draw the same points
        config = _toy_config(4, concurrency=2, tuner_args={"seed": seed, "sampler": "tpe", "study_name": "shared",
                                                           "storage_env": "NNI_VISPLUGIN_TEST_STUDY_URL"})
        config["searchSpace"]["steps"] = {"_type": "choice", "_value": [2]}
        configs.append(config)
    for i in range(2):
        (tmp_path / f"exp{i}").mkdir()
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run_experiment, tmp_path / f"exp{i}", c, 300, env=env) for i, c in enumerate(configs)]
        reports = [r.result() for r in runs]

    study = optuna.load_study(study_name="shared", storage=postgres.url)
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    keys = [(t.user_attrs["nni_experiment"], t.user_attrs["nni_parameter_id"]) for t in trials]
    assert len(set(keys)) == 8  # every trial of both experiments recorded once
    by_key = dict(zip(keys, trials))
    for report in reports:
        assert report["status"] == "DONE", report
        assert len(report["trials"]) == 4 and all(t["status"] == "SUCCEEDED" for t in report["trials"])
        ran = _ran(report)
        assert len(ran) == 4
        for pid, record in ran.items():
            told = by_key[(report["experiment_id"], pid)]
            assert json.loads(told.user_attrs["nni_params"]) == record["parameters"]
            assert told.value == pytest.approx(record["parameters"]["x"])  # its own result
        # The password is nowhere NNI shows or keeps: not in the config it serves, not in its logs.
        assert postgres.password not in json.dumps(report["experiment"])
        for path in Path(report["experiment_dir"]).rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert postgres.password.encode() not in path.read_bytes(), path


def test_tuners_starting_together_on_an_empty_postgresql_database(postgres):
    """Six processes open one empty database at the same instant: every one gets the study (they
    all create Optuna's tables at once, and the losers of that race must retry, not fail)."""
    start = __import__("time").time() + 3
    code = ("import sys, time; from nni_visplugin.tuners import OptunaTuner; "
            f"time.sleep(max(0, {start} - time.time())); "
            "t = OptunaTuner(storage_env='URL', study_name='race', seed=int(sys.argv[1])); print(t.study.study_name)")
    env = {**__import__("os").environ, "URL": postgres.url}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e[-800:] for _, e in outs]
    assert [o.strip() for o, _ in outs] == ["race"] * 6
    assert len(optuna.get_all_study_summaries(postgres.url)) == 1
