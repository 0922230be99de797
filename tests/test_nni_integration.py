"""The real thing: nnictl, the NNI manager, the plugin's tuner and trials, on loopback."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import psutil
import pytest
import torch
import yaml

from helpers.nni import REPO, run_experiment, shipped_config

import nni_visplugin
from nni_visplugin.config.search import SearchConfig
from nni_visplugin.tuners import OptunaTuner


def test_shipped_darts_config_is_valid():
    config = shipped_config()
    assert config["tuner"]["className"] == "nni_visplugin.tuners.OptunaTuner"
    tuned = set(config["searchSpace"])
    assert {"arch_lr", "weight_lr", "weight_decay", "epochs"} <= tuned
    tuner = OptunaTuner(**config["tuner"]["classArgs"])
    tuner.update_search_space(config["searchSpace"])
    # Every value the tuner can send is a valid setting of the trial.
    for i in range(5):
        SearchConfig.create(tuner.generate_parameters(i))
    assert config["trialConcurrency"] >= 2 and config["maxTrialNumber"] >= 8


def _decode(metric: dict):
    """A metric record's value: NNI stores dict results JSON-encoded twice."""
    data = json.loads(metric["data"])
    return json.loads(data) if isinstance(data, str) else data


@pytest.fixture(scope="module")
def experiment(darts_experiment):
    return darts_experiment  # shared with the web UI test: one experiment for both


def test_experiment_ends_done_with_every_trial_succeeded(experiment):
    assert experiment["status"] == "DONE", experiment
    assert not experiment.get("timed_out")
    trials = experiment["trials"]
    assert len(trials) == 4
    assert all(t["status"] == "SUCCEEDED" for t in trials), [t["status"] for t in trials]
    by_trial: dict[str, list] = {}
    for m in experiment["metrics"]:
        by_trial.setdefault(m["trialJobId"], []).append(m)
    for t in trials:
        kinds = [m["type"] for m in by_trial[t["trialJobId"]]]
        assert "FINAL" in kinds and "PERIODICAL" in kinds  # a final result and a per-epoch curve


def _trial_dirs(experiment) -> list[Path]:
    root = Path(experiment["experiment_dir"])
    dirs = sorted(p.parent for p in root.glob("**/trials/*/parameters.json"))
    assert len(dirs) == 4
    return dirs


def test_each_trial_leaves_arch_alphas_and_result(experiment):
    for d in _trial_dirs(experiment):
        for name in ("arch.json", "alphas.json", "result.json", "model.pt"):
            assert (d / name).exists(), d / name
        model = nni_visplugin.load_model(d)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_every_result_is_paired_with_its_own_parameters(experiment):
    """With two trials at a time, NNI's records can mix parameters and results (issue 5726). The
    Optuna study must not: each Optuna trial holds the parameters the NNI trial really ran with, and
    that trial's own result."""
    exp_dir = Path(experiment["experiment_dir"])
    study = optuna.load_study(study_name=f"nni-{experiment['experiment_id']}", storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    trials = {t.user_attrs["nni_parameter_id"]: t for t in study.get_trials()}
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values())
    metric_ids = {m["trialJobId"]: int(m["parameterId"]) for m in experiment["metrics"] if m["type"] == "FINAL"}
    for d in _trial_dirs(experiment):
        ran = json.loads((d / "parameters.json").read_text())
        result = json.loads((d / "result.json").read_text())
        optuna_trial = trials[ran["parameter_id"]]
        assert json.loads(optuna_trial.user_attrs["nni_params"]) == ran["parameters"]
        assert optuna_trial.value == pytest.approx(result["val_accuracy"])
        assert result["hyperparameters"]["arch_lr"] == ran["parameters"]["arch_lr"]
        assert metric_ids[ran["trial_id"]] == ran["parameter_id"]
        # The assessor handed every epoch's supernet accuracy to this trial's Optuna trial.
        curve = [_decode(m)["default"] for m in experiment["metrics"]
                 if m["type"] == "PERIODICAL" and m["trialJobId"] == ran["trial_id"]]
        assert len(curve) == ran["parameters"]["epochs"]
        assert [optuna_trial.intermediate_values[i] for i in range(len(curve))] == pytest.approx(curve)


def test_best_command_finds_the_best_trial_of_a_real_experiment(experiment):
    import subprocess
    import sys

    exp_dir = Path(experiment["experiment_dir"])
    out = subprocess.run([sys.executable, "-m", "nni_visplugin.cli", "best", experiment["experiment_id"],
                          "--root", str(exp_dir.parent)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    results = {str(d): json.loads((d / "result.json").read_text())["val_accuracy"] for d in _trial_dirs(experiment)}
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("best: ")
    assert results[last[len("best: "):]] == max(results.values())  # a trial of the best accuracy (ties: any)


def test_nothing_is_left_running(experiment):
    needle = experiment["experiment_dir"]
    alive = [p.pid for p in psutil.process_iter(["cmdline"]) if any(needle in c for c in (p.info["cmdline"] or []))]
    assert alive == []


NAS_EXPERIMENT_SCRIPT = """
import json, sys
from nni.nas.evaluator.pytorch import Classification
from nni.nas.experiment import NasExperiment
from torch.utils.data import DataLoader, TensorDataset
import nni_visplugin
from nni_visplugin.data.datasets import load_dataset

splits = load_dataset("digits", max_train_samples=200)
train = DataLoader(TensorDataset(*splits.train), batch_size=50)
val = DataLoader(TensorDataset(*splits.val), batch_size=100)
space = nni_visplugin.create_space("seed_cells", in_channels=1, image_size=8, num_classes=10, width=4)
strategy = nni_visplugin.create_strategy("darts", epochs=1)
exp = NasExperiment(space, Classification(train_dataloaders=train, val_dataloaders=val, num_classes=10), strategy)
exp.config.experiment_working_directory = sys.argv[1]
exp.run()
(arch,) = exp.export_top_models(formatter="dict")
exp.stop()
print("RESULT " + json.dumps({"arch": arch, "outcome": strategy.outcome.arch, "history": strategy.outcome.history}))
"""


def test_nas_experiment_runs_the_plugin_strategy(tmp_path):
    """The strategy is a real NNI Strategy: NasExperiment picks the sequential engine and exports it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(tmp_path)}  # NNI keeps its experiment manifest under ~
    proc = subprocess.run([sys.executable, "-c", NAS_EXPERIMENT_SCRIPT, str(tmp_path / "exp")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert set(out["arch"]) == {"cell0", "cell1"}
    assert out["arch"] == out["outcome"]
    assert len(out["history"]) == 1 and "val_accuracy" in out["history"][0]


@pytest.fixture(scope="module")
def proxyless_experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nni_proxyless")
    config = yaml.safe_load((REPO / "experiments" / "proxyless.yml").read_text())
    config["maxTrialNumber"] = 2
    config["maxExperimentDuration"] = "6m"
    config["trialCodeDirectory"] = str(REPO / "experiments")
    config["tuner"] = {**config["tuner"], "codeDirectory": str(REPO / "experiments")}
    config["trialCommand"] = (config["trialCommand"].replace("epochs=20", "epochs=2").replace("final_epochs=15", "final_epochs=1")
                              + " --set space.widths=[8,16] --set space.depths=[1,2] --set space.head_width=16"
                              + " --set max_train_samples=300")
    return run_experiment(tmp, config, timeout=360)


def test_shipped_proxyless_config_is_valid():
    config = yaml.safe_load((REPO / "experiments" / "proxyless.yml").read_text())
    assert "latency_beta" in config["searchSpace"] or "latency_target_ms" in config["searchSpace"]
    tuner = OptunaTuner(**config["tuner"]["classArgs"])
    tuner.update_search_space(config["searchSpace"])
    base = SearchConfig.create({"space": "proxyless_mobile", "strategy": "proxyless", "latency_loss": "mul",
                                "latency_target_ms": 1.8})
    for i in range(5):
        SearchConfig.create(tuner.generate_parameters(i), base=base)


def test_proxyless_experiment_reports_accuracy_and_latency(proxyless_experiment):
    assert proxyless_experiment["status"] == "DONE", proxyless_experiment
    trials = proxyless_experiment["trials"]
    assert len(trials) == 2 and all(t["status"] == "SUCCEEDED" for t in trials)
    finals = [_decode(m) for m in proxyless_experiment["metrics"] if m["type"] == "FINAL"]
    assert len(finals) == 2
    for final in finals:
        assert 0.0 <= final["default"] <= 1.0  # the accuracy is the result NNI ranks by
        assert final["latency_predicted_ms"] > 0 and final["latency_measured_ms"] > 0
    for d in Path(proxyless_experiment["experiment_dir"]).glob("**/trials/*/result.json"):
        result = json.loads(d.read_text())
        assert result["strategy"] == "proxyless" and result["latency_error"] >= 0
