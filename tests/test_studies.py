"""`nni-visplugin pareto` and `importance` on studies in a real SQLite storage."""
from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from nni_visplugin.hpo.studies import StudyError, open_study, param_importances, pareto_front


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nni_visplugin.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture
def experiment_dir(tmp_path):
    """An experiment directory as the tuner leaves it: optuna.db with the study nni-<id>."""
    exp = tmp_path / "abc123"
    exp.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{exp / 'optuna.db'}", study_name="nni-abc123",
                                directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["default", "num_params"])

    def objective(trial):
        width = trial.suggest_int("width", 1, 20)
        noise = trial.suggest_float("noise", 0, 1)
        return 1 - 1 / width - 0.001 * noise, 1000 * width

    study.optimize(objective, n_trials=30)
    return exp


def test_pareto_front_is_the_set_of_non_dominated_trials(experiment_dir, tmp_path):
    study = open_study(str(experiment_dir))
    front = pareto_front(study)
    trials = study.get_trials()

    def dominates(b, a):
        return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])

    expected = {t.number for t in trials if not any(dominates(o.values, t.values) for o in trials)}
    assert {r["number"] for r in front["trials"]} == expected and len(expected) >= 3
    assert front["completed_trials"] == 30

    out = tmp_path / "out"
    shown = _cli("pareto", "abc123", "--root", str(experiment_dir.parent), "--out", str(out))
    assert shown.returncode == 0, shown.stderr
    assert json.loads((out / "pareto.json").read_text())["trials"] == json.loads(json.dumps(front["trials"]))
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert f"{len(expected)} of 30 completed trials" in shown.stdout


def test_importance_ranks_the_parameter_that_drives_the_objective_first(experiment_dir):
    study = open_study(str(experiment_dir))
    for evaluator in ("fanova", "mdi", "ped-anova"):
        for objective in ("num_params", "default"):
            ranking = param_importances(study, evaluator, objective=objective)
            assert list(ranking)[0] == "width", (evaluator, objective, ranking)
    shown = _cli("importance", str(experiment_dir), "--objective", "default", "--evaluator", "mdi")
    assert shown.returncode == 0, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()[1:]]
    assert lines[0][0] == "width" and float(lines[0][1]) > float(lines[1][1])


def test_a_storage_url_from_the_environment_and_its_only_study(experiment_dir):
    import os

    env = {**os.environ, "MY_STUDY": f"sqlite:///{experiment_dir / 'optuna.db'}"}
    shown = _cli("importance", "env:MY_STUDY", "--objective", "num_params", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "nni-abc123" in shown.stdout


@pytest.mark.parametrize("args, message", [
    (["pareto", "nope"], "no study for 'nope'"),
    (["importance", "env:NNI_VISPLUGIN_UNSET"], "environment variable NNI_VISPLUGIN_UNSET is not set"),
])
def test_errors_are_one_line(args, message):
    shown = _cli(*args)
    assert shown.returncode == 2 and message in shown.stderr and "Traceback" not in shown.stderr


def test_questions_the_study_cannot_answer(experiment_dir, tmp_path):
    study = open_study(str(experiment_dir))
    with pytest.raises(StudyError, match="choose one with --objective"):
        param_importances(study)
    with pytest.raises(StudyError, match="no objective 'loss'"):
        param_importances(study, objective="loss")
    single = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="one")
    with pytest.raises(StudyError, match="has one objective"):
        pareto_front(single)
    with pytest.raises(StudyError, match="importance needs 2 or more"):
        param_importances(single)
    with pytest.raises(StudyError, match="no study named 'other'"):
        open_study(f"sqlite:///{tmp_path / 's.db'}", "other")
