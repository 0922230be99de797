"""`nni-visplugin pipeline` end to end with the real nnictl: search, pick, retrain, test, export, report;
and a second run with the same output directory redoes nothing."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from helpers.nni import REPO, free_port, run_in_netns
from helpers.nni_driver import kill_leftovers

from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.config.pipeline import PipelineConfig


def _tiny_pipeline(tmp_path: Path) -> Path:
    doc = yaml.safe_load((REPO / "experiments" / "fashion_mnist.yml").read_text())
    exp = doc["experiment"]
    exp["maxTrialNumber"] = 2
    exp["maxExperimentDuration"] = "6m"
    exp["trialCodeDirectory"] = str(REPO / "experiments")
    exp["tuner"]["codeDirectory"] = str(REPO / "experiments")
    exp["searchSpace"]["epochs"] = {"_type": "choice", "_value": [1]}
    exp["trialCommand"] = ("python -m nni_visplugin.trial --space darts_cell --dataset digits --set space.width=4 "
                           "--set space.num_cells=2 --set num_threads=1 --set max_train_samples=300 "
                           "--set partial_channels=2 --set edge_norm=true --set final_epochs=1")
    doc["pipeline"] = {"out": str(tmp_path / "run"), "retrain": {"dataset": "digits", "epochs": 1, "width": 8,
                                                                 "threads": 1, "seeds": [0, 1], "jobs": 2},
                       "export": ["onnx"]}
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_pipeline_end_to_end_and_resume(tmp_path):
    config = _tiny_pipeline(tmp_path)
    cmd = [sys.executable, "-m", "nni_visplugin.cli", "pipeline", "--config", str(config), "--port", str(free_port())]
    try:
        # Without the interpreter's directory on PATH, as for a user who did not activate the
        # environment: the trials' `python` must still be the one that has nni_visplugin.
        first = run_in_netns(cmd, tmp_path, timeout=900, interpreter_on_path=False)
    finally:
        kill_leftovers(tmp_path / "run" / "nni", None)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = tmp_path / "run"
    result = json.loads((out / "pipeline.json").read_text())
    search = json.loads((out / "search.json").read_text())

    # The pick is the search whose derived network did best on the validation split.
    assert len(search["trials"]) == 2
    assert search["best"]["val_accuracy"] == max(t["val_accuracy"] for t in search["trials"])
    assert search["status"] == "DONE"
    # Retrained once per seed, wider than searched, tested once each.
    runs = result["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:
        assert 0.0 < r["test_accuracy"] <= 1.0 and (Path(r["dir"]) / "model.pt").exists()
        assert r["space_kwargs"]["width"] == 8
    summary = result["summary"]
    accs = [r["test_accuracy"] for r in runs]
    assert summary["test accuracy (mean over seeds)"] == pytest.approx(sum(accs) / 2)
    # Exported and checked against PyTorch.
    onnx = result["exports"]["onnx"]
    assert Path(onnx["file"]).exists() and onnx["max_abs_diff"] < 1e-4

    # The report: a page whose every figure exists, with the metrics in it.
    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"figures/trials.png", "figures/alphas_normal.png", "figures/cell_normal.png",
            "figures/cell_reduce.png", "figures/retraining.png"} <= set(images)
    for img in images:
        assert (out / img).read_bytes()[:4] == b"\x89PNG"
    assert f"{accs[0]:.4f}" in page and search["best"]["trial"] in page
    # Whether the picked search decided is in the summary, and an undecided one's warning on the page.
    picked = json.loads((Path(search["best"]["dir"]) / "result.json").read_text())
    assert summary["alphas decided"].startswith("yes" if picked["decided"] else "NO")
    assert ("random draw from the space" in page) == (not picked["decided"])

    # A second run with the same output directory reuses every stage's files; asked for one more
    # seed, it retrains only that one, and the record of calls keeps the first call's wall time.
    second = run_in_netns(cmd + ["--seeds", "0", "1", "2", "--jobs", "2"], tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "search: done before" in second.stdout
    assert "retrain seed 0: done before" in second.stdout and "retrain seed 1: done before" in second.stdout
    assert "retrain seed 2: test accuracy" in second.stdout
    again = json.loads((out / "pipeline.json").read_text())
    assert [r["seed"] for r in again["runs"]] == [0, 1, 2]
    assert [r["test_accuracy"] for r in again["runs"]][:2] == accs
    assert again["summary"]["seeds"] == [0, 1, 2]
    first_call, second_call = again["calls"]
    assert first_call == result["calls"][0]
    assert first_call["searched"] and first_call["retrained seeds"] == [0, 1]
    assert not second_call["searched"] and second_call["retrained seeds"] == [2] and second_call["threads"] == 1
    assert first_call["wall_seconds"] >= summary["pipeline wall time this run (s)"]


def test_seeds_side_by_side_match_one_after_another(tmp_path):
    """Seeds retrained in worker processes (jobs=2) give exactly what the same seeds give one after
    the other in this process: same weights' accuracy, same curve; a finished seed is not redone."""
    from helpers.retrain import fake_search_dir

    from nni_visplugin.stages.pipeline import retrain_seeds

    arch = fake_search_dir(tmp_path / "search") / "arch.json"
    doc = {"experiment": {}, "pipeline": {"retrain": {"dataset": "digits", "epochs": 2, "width": 8, "threads": 1,
                                                      "seeds": [0, 1]}}}
    results = {}
    for jobs in (1, 2):
        doc["pipeline"]["retrain"]["jobs"] = jobs
        path = tmp_path / f"p{jobs}.yml"
        path.write_text(yaml.safe_dump(doc))
        results[jobs] = retrain_seeds(PipelineConfig.load(path), arch, tmp_path / f"jobs{jobs}")
    for one, two in zip(results[1], results[2]):
        assert one["seed"] == two["seed"] and one["threads"] == two["threads"] == 1
        assert one["test_accuracy"] == two["test_accuracy"]
        assert [e["train_loss"] for e in one["curve"]] == [e["train_loss"] for e in two["curve"]]
    assert results[1][0]["curve"] != results[1][1]["curve"]  # the seeds differ
    # Latency of models that trained side by side is measured again once they have all finished.
    assert all("latency_note" in r and r["latency_ms"] > 0 for r in results[2])
    assert not any("latency_note" in r for r in results[1])
    stamp = (tmp_path / "jobs2" / "seed1" / "model.pt").stat().st_mtime_ns
    stage = json.loads((tmp_path / "jobs2" / "stage.json").read_text())
    assert stage["jobs"] == 2 and 0 < stage["wall_seconds"] < sum(r["wall_seconds"] for r in results[2]) + 60
    again = retrain_seeds(PipelineConfig.load(tmp_path / "p2.yml"), arch, tmp_path / "jobs2")
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in results[2]]
    assert (tmp_path / "jobs2" / "seed1" / "model.pt").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "jobs2" / "stage.json").read_text()) == stage  # nothing retrained, no time added


@pytest.mark.parametrize("doc, message", [
    ({"pipeline": {}}, "needs an 'experiment' mapping"),
    ({"experiment": {}, "extra": 1}, "unknown top-level key(s) extra"),
    ({"experiment": {}, "pipeline": {"retrain": {"epoch": 3}}}, "unknown pipeline.retrain key(s) epoch"),
    ({"experiment": {}, "pipeline": {"retrain": {"seeds": []}}}, "seeds must be a non-empty list"),
    ({"experiment": {}, "pipeline": {"retrain": {"jobs": 0}}}, "pipeline.retrain.jobs must be an integer >= 1"),
    ({"experiment": {}, "pipeline": {"export": ["tflite"]}}, "pipeline.export takes onnx and/or torchscript"),
    ({"experiment": {}, "pipeline": {"port": 0}}, "pipeline.port must be a TCP port"),
])
def test_bad_pipeline_configs_are_refused(tmp_path, doc, message):
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=re.escape(message)):
        PipelineConfig.load(path)


def test_command_line_seeds_jobs_and_threads_replace_the_configs(tmp_path):
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump({"experiment": {}, "pipeline": {"retrain": {"seeds": [0], "threads": 2}}}))
    cfg = PipelineConfig.load(path)
    assert cfg.seeds == (0,) and cfg.jobs == 1 and cfg.retrain["threads"] == 2
    cfg = PipelineConfig.load(path, seeds=[0, 1, 2], jobs=2)
    assert cfg.seeds == (0, 1, 2) and cfg.jobs == 2 and cfg.retrain["threads"] == 1  # one thread per process
    assert PipelineConfig.load(path, jobs=2, threads=3).retrain["threads"] == 3
    for kwargs, message in (({"seeds": []}, "seeds must be a non-empty list"), ({"jobs": 0}, "jobs must be an integer"),
                            ({"threads": -1}, "threads must be an integer >= 0")):
        with pytest.raises(ConfigError, match=message):
            PipelineConfig.load(path, **kwargs)


def test_shipped_pipeline_config_is_valid(tmp_path):
    from nni_visplugin.hpo.check import check_experiment

    cfg = PipelineConfig.load(REPO / "experiments" / "fashion_mnist.yml")
    assert cfg.retrain["dataset"] == "fashion-mnist" and cfg.seeds
    exp = tmp_path / "experiment.yml"
    exp.write_text(yaml.safe_dump(cfg.experiment))
    assert check_experiment(exp) == []


def test_shipped_pipeline_config_runs_on_whatever_device_there_is():
    """RESULTS.md's GPU run is the same file with another --out: no device setting may pin the CPU."""
    from nni_visplugin.hpo.check import check_experiment

    path = REPO / "experiments" / "fashion_mnist.yml"
    assert check_experiment(path) == []
    doc = yaml.safe_load(path.read_text())
    devices = re.findall(r"--set\s+'?device=([^\s']*)", doc["experiment"]["trialCommand"])
    assert all(device == "auto" for device in devices)
    assert doc["pipeline"]["retrain"].get("device", "auto") == "auto"
    # every search at once, one per core on the 2-core CPU
    assert doc["experiment"]["trialConcurrency"] == doc["experiment"]["maxTrialNumber"] == 2


def test_check_reads_pipeline_configs(tmp_path):
    """`nni-visplugin check` takes a pipeline config as it is: its pipeline section and its experiment."""
    from nni_visplugin.hpo.check import check_experiment

    assert check_experiment(REPO / "experiments" / "fashion_mnist.yml") == []
    doc = yaml.safe_load((REPO / "experiments" / "fashion_mnist.yml").read_text())
    doc["pipeline"]["retrain"]["epoch"] = 3
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc))
    assert any("unknown pipeline.retrain key(s) epoch" in p for p in check_experiment(bad))
    doc["pipeline"]["retrain"].pop("epoch")
    doc["experiment"]["trialCommand"] += " --set space.widht=8"
    bad.write_text(yaml.safe_dump(doc))
    problems = check_experiment(bad)
    assert problems and any("widht" in p for p in problems)
