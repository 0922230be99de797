"""`nni-visplugin check`: every mistake gets a non-zero exit and one line naming the field and the fix."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from helpers.nni import FASHION_MNIST_DIR, REPO

import nni_visplugin
from nni_visplugin.hpo.check import check_experiment

BASE = yaml.safe_load((REPO / "experiments" / "darts.yml").read_text())


def _with(**changes):
    doc = {**BASE, **{k: v for k, v in changes.items() if k not in ("command_extra", "space_extra")}}
    if "command_extra" in changes:
        doc["trialCommand"] = BASE["trialCommand"] + " " + changes["command_extra"]
    if "space_extra" in changes:
        doc["searchSpace"] = {**BASE["searchSpace"], **changes["space_extra"]}
    return doc


NO_ASSESSOR = {k: v for k, v in BASE.items() if k != "assessor"}

# case -> (config, the line must contain)
CASES = {
    "unknown setting": (_with(command_extra="--set arch_lrr=0.1"), "unknown setting 'arch_lrr'"),
    "unknown space setting": (_with(command_extra="--set space.depth=3"), "unknown setting 'space.depth'"),
    "unknown space": (_with(command_extra="--space nas201"), "unknown space 'nas201'; known: darts_cell"),
    "unknown strategy": (_with(command_extra="--strategy enas"), "unknown strategy 'enas'; known: darts"),
    "unknown dataset": (_with(command_extra="--dataset mnist"), "unknown dataset 'mnist'; known: digits"),
    "bad value": (_with(command_extra="--set order=3"), "order must be 1 or 2"),
    "unknown trial flag": (_with(command_extra="--epochz 3"), "unknown argument(s) --epochz"),
    "empty choice": (_with(space_extra={"epochs": {"_type": "choice", "_value": []}}), "'epochs': choice needs at least one option"),
    # space.py phrases the accepted range (low < high, or low <= high where low == high is a point)
    "low > high": (_with(space_extra={"arch_lr": {"_type": "loguniform", "_value": [0.1, 0.01]}}), "'arch_lr': loguniform needs low "),
    "unknown _type": (_with(space_extra={"arch_lr": {"_type": "gauss", "_value": [0, 1]}}), "unknown _type 'gauss'"),
    "tuned key unknown": (_with(space_extra={"lr": {"_type": "uniform", "_value": [0.1, 0.2]}}), "searchSpace.lr: unknown setting 'lr'"),
    "tuned value invalid": (_with(space_extra={"epochs": {"_type": "uniform", "_value": [1.5, 2.5]}}), "searchSpace.epochs: epochs must be an integer"),
    "missing dataset dir": (_with(command_extra="--dataset fashion-mnist --data-dir /nonexistent/fm"), "--data-dir: /nonexistent/fm does not exist"),
    "cifar without dir": (_with(command_extra="--dataset cifar10"), "--data-dir: dataset cifar10 needs a data directory"),
    "bad sampler": ({**BASE, "tuner": {**BASE["tuner"], "classArgs": {"sampler": "bayes"}}}, "tuner.classArgs: unknown sampler 'bayes'"),
    "password in storage": ({**BASE, "tuner": {**BASE["tuner"], "classArgs": {"storage": "postgresql://u:pw@db/x"}}},
                            "tuner.classArgs: storage: the URL holds a password"),
    "storage_env unset": ({**BASE, "tuner": {**BASE["tuner"], "classArgs": {"storage_env": "NNI_VISPLUGIN_UNSET_VAR"}}},
                          "tuner.classArgs: storage_env: the environment variable NNI_VISPLUGIN_UNSET_VAR is not set"),
    "bad objective mode": ({**BASE, "tuner": {**BASE["tuner"], "classArgs": {"objectives": {"default": "max"}}}},
                           "tuner.classArgs: objectives.default: must be maximize or minimize"),
    "one-objective sampler": ({**NO_ASSESSOR, "tuner": {**BASE["tuner"], "classArgs": {
        "sampler": "cmaes", "objectives": {"default": "maximize", "num_params": "minimize"}}}},
        "tuner.classArgs: sampler 'cmaes' optimises one objective"),
    "bad pruner": ({**BASE, "assessor": {**BASE["assessor"], "classArgs": {"pruner": "nope.Pruner"}}},
                   "assessor.classArgs.pruner: cannot import 'nope.Pruner'"),
    "bad assessor arg": ({**BASE, "assessor": {**BASE["assessor"], "classArgs": {"warmup": 1}}},
                         "unknown argument(s) warmup"),
    "assessor on a Pareto search": ({**BASE, "tuner": {**BASE["tuner"], "classArgs": {
        "sampler": "nsga2", "objectives": {"default": "maximize", "num_params": "minimize"}}}},
        "assessor: Optuna prunes single-objective studies only"),
    "bad tuner arg": ({**BASE, "tuner": {**BASE["tuner"], "classArgs": {"seeed": 1}}}, "unknown argument(s) seeed"),
    "no trialCommand": ({k: v for k, v in BASE.items() if k != "trialCommand"}, "trialCommand: missing"),
    "channels vs digits": (_with(command_extra="--set space.in_channels=3"),
                           "trialCommand: space.in_channels=3 but dataset digits has 1-channel images: "
                           "remove the setting or use a dataset with 3 channels"),
    "channels vs fashion-mnist": (_with(command_extra="--dataset fashion-mnist --set space.in_channels=3"),
                                  "space.in_channels=3 but dataset fashion-mnist has 1-channel images"),
    "channels vs imagefolder": (_with(command_extra="--dataset imagefolder --data-dir /nonexistent/img "
                                                    "--set space.in_channels=1"),
                                "space.in_channels=1 but dataset imagefolder has 3-channel images (image folders "
                                "are read as RGB): remove the setting or use a dataset with 1 channel"),
    "channels tuned": (_with(space_extra={"space.in_channels": {"_type": "choice", "_value": [3]}}),
                       "searchSpace.space.in_channels: space.in_channels=3 but dataset digits has 1-channel images"),
    "channels zero": (_with(command_extra="--set space.in_channels=0"), "space.in_channels must be >= 1, got 0"),
    "unknown primitive": (_with(command_extra="--set 'space.primitives=[\"conv_3x3\", \"conv_9x9\"]'"),
                          "trialCommand: space darts_cell refuses its settings: unknown primitive(s) ['conv_9x9']"),
    "odd width": (_with(command_extra="--set space.width=7"), "darts_cell: width must be even"),
    "channels not a number": (_with(command_extra="--set space.in_channels=rgb"),
                              "space.in_channels must be an integer, got 'rgb'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_is_one_line_naming_the_field(case, tmp_path):
    config, expected = CASES[case]
    path = tmp_path / "exp.yml"
    path.write_text(yaml.safe_dump(config))
    problems = check_experiment(path)
    assert len(problems) == 1, problems
    assert expected in problems[0], problems[0]
    assert "\n" not in problems[0]


def _without(key, **changes):
    return {**{k: v for k, v in BASE.items() if k != key}, **changes}


# NNI's own fields, judged by NNI's config classes: case -> (config, the field named, the line must contain)
NNI_CASES = {
    "misspelled field": (_without("trialConcurrency", trialConcurency=2), "trialConcurency",
                         "trialConcurency: not a field of NNI's experiment config (did you mean trialConcurrency?)"),
    "concurrency zero": (_with(trialConcurrency=0), "trialConcurrency", "NNI requires trialConcurrency > 0, got 0"),
    "max trials not a number": (_with(maxTrialNumber="ten"), "maxTrialNumber", "must be an integer, got 'ten'"),
    "max trials zero": (_with(maxTrialNumber=0), "maxTrialNumber", "NNI requires maxTrialNumber > 0, got 0"),
    "concurrency as text": (_with(trialConcurrency="2"), "trialConcurrency", "must be an integer, got '2'"),
    "concurrency yes": (_with(trialConcurrency=True), "trialConcurrency", "must be an integer, got True"),
    "missing trialConcurrency": (_without("trialConcurrency"), "trialConcurrency", "missing; NNI requires it (an integer)"),
    "missing trainingService": (_without("trainingService"), "trainingService", "missing; NNI requires it"),
    "unknown platform": (_with(trainingService={"platform": "lokal"}), "trainingService.platform",
                         "'lokal' is not one of NNI's training services: aml, dlc, frameworkcontroller, kubeflow, "
                         "local, openpai, remote (did you mean local?)"),
    "training service not a mapping": (_with(trainingService="local"), "trainingService", "must be a mapping"),
    "misspelled training-service field": (_with(trainingService={"platform": "local", "gpuIndicez": 0}),
                                          "trainingService.gpuIndicez", "(did you mean gpuIndices?)"),
    "misspelled tuner field": (_with(tuner={**BASE["tuner"], "classArg": {}}), "tuner.classArg",
                               "not a field of NNI's tuner config (did you mean classArgs?)"),
    "bad duration unit": (_with(maxExperimentDuration="15x"), "maxExperimentDuration", 'Bad unit in "15x"'),
    "zero duration": (_with(maxTrialDuration="0m"), "maxTrialDuration", "NNI requires maxTrialDuration > 0, got '0m'"),
    "bad log level": (_with(logLevel="verbose"), "logLevel", "NNI requires logLevel in ['fatal', 'error'"),
    "no trial code directory": (_with(trialCodeDirectory="nope"), "trialCodeDirectory", "nope\" is not a directory"),
    "no tuner code directory": (_with(tuner={**BASE["tuner"], "codeDirectory": "nope"}), "tuner.codeDirectory",
                                "nope\" is not a directory"),
    "a GPU without useActiveGpu": (_with(trialGpuNumber=1), "trainingService.useActiveGpu", "please set useActiveGpu"),
    "field given twice": (_with(trial_concurrency=3), "trial_concurrency", "the same NNI field as trialConcurrency"),
    "NAS experiment type": (_with(experimentType="nas"), "experimentType", "must be 'hpo', got 'nas'"),
}


@pytest.mark.parametrize("case", list(NNI_CASES))
def test_each_nni_field_mistake_is_one_line_naming_the_field(case, tmp_path):
    config, field, expected = NNI_CASES[case]
    path = tmp_path / "exp.yml"
    path.write_text(yaml.safe_dump(config))
    problems = check_experiment(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: "), problems[0]
    assert expected in problems[0], problems[0]
    assert "\n" not in problems[0]


def test_nni_fields_are_checked_in_a_pipeline_config(tmp_path):
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump({"experiment": _with(trialConcurrency=0), "pipeline": {}}))
    assert check_experiment(path) == ["trialConcurrency: NNI requires trialConcurrency > 0, got 0"]


def test_nni_field_mistakes_are_all_reported(tmp_path):
    path = tmp_path / "exp.yml"
    path.write_text(yaml.safe_dump(_without("trialConcurrency", trialConcurency=2, maxTrialNumber="ten",
                                            trainingService={"platform": "local", "useActiveGPU": "no"})))
    assert sorted(check_experiment(path)) == [
        "maxTrialNumber: must be an integer, got 'ten'",
        "trainingService.useActiveGPU: must be true or false, got 'no'",
        "trialConcurency: not a field of NNI's experiment config (did you mean trialConcurrency?)",
    ]


def test_nni_keys_ignore_case_and_underscores_as_nni_does(tmp_path):
    path = tmp_path / "exp.yml"
    config = {k: v for k, v in BASE.items() if k not in ("trialConcurrency", "maxTrialNumber")}
    path.write_text(yaml.safe_dump({**config, "trial_concurrency": 2, "MaxTrialNumber": 3}))
    assert check_experiment(path) == []


def test_checking_nni_fields_writes_nothing(tmp_path, monkeypatch):
    """NNI's platform lookup creates its config directory and copies a file there; its working
    directory is made when the experiment starts: a check does neither."""
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni-config"))
    path = tmp_path / "exp.yml"
    path.write_text(yaml.safe_dump(_with(experimentWorkingDirectory=str(tmp_path / "work"))))
    assert check_experiment(path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yml"]


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "experiments").glob("*.yml")))
def test_shipped_configs_check_clean(config):
    path = REPO / "experiments" / config
    if "fashion-mnist" in path.read_text() and not FASHION_MNIST_DIR.is_dir():
        pytest.skip("needs dataset-fashion-mnist")
    assert check_experiment(path) == []


def test_cli_prints_search_space_mistakes_as_its_lines_only(tmp_path):
    """No log line or traceback of the tuner's error guard: one line a mistake, exit code 1."""
    broken = {"empty choice": {"epochs": {"_type": "choice", "_value": []}},
              "low > high": {"arch_lr": {"_type": "loguniform", "_value": [0.1, 0.01]}},
              "unknown _type": {"arch_lr": {"_type": "gauss", "_value": [0, 1]}}}
    paths = []
    for i, extra in enumerate(broken.values()):
        paths.append(tmp_path / f"bad{i}.yml")
        paths[-1].write_text(yaml.safe_dump(_with(space_extra=extra)))
    out = subprocess.run([sys.executable, "-m", "nni_visplugin.cli", "check", *map(str, paths)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [str(p) for p in paths], out.stderr
    assert all(line.startswith(f"{p}: searchSpace: search space parameter '") for line, p in zip(lines, paths))
    assert "Traceback" not in out.stderr and "ERROR" not in out.stderr


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("trialCommand: python -m nni_visplugin.trial\nsearchSpace: {a: [1, 2}\n")
    (problem,) = check_experiment(path)
    assert problem.startswith("malformed YAML at line 2")


def test_latency_table_of_another_space(tmp_path):
    from nni_visplugin.nas.latency import load_or_measure

    from helpers.spaces import tiny_kwargs

    table = tmp_path / "t.json"
    load_or_measure(table, "seed_cells", tiny_kwargs("seed_cells"), "cpu", 1)
    config = yaml.safe_load((REPO / "experiments" / "proxyless.yml").read_text())
    config["trialCommand"] += f" --set latency_table={table}"
    path = tmp_path / "exp.yml"
    path.write_text(yaml.safe_dump(config))
    (problem,) = check_experiment(path)
    assert "latency_table" in problem and "'seed_cells', not 'proxyless_mobile'" in problem


def test_cli_exit_codes(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(CASES["unknown space"][0]))
    cli = [sys.executable, "-m", "nni_visplugin.cli", "check"]
    good = subprocess.run(cli + [str(REPO / "experiments" / "darts.yml"), str(REPO / "experiments" / "proxyless.yml")],
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert good.stdout.count(": ok") == 2
    out = subprocess.run(cli + [str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    known = ", ".join(sorted(nni_visplugin.list_spaces()))
    assert "darts_cell" in known and "seed_cells" in known
    assert out.stderr.strip().splitlines() == [f"{bad}: trialCommand: unknown space 'nas201'; known: {known}"]


def test_in_channels_that_match_the_data_are_accepted(tmp_path):
    (tmp_path / "cifar").mkdir()
    cifar = f"--dataset cifar10 --data-dir {tmp_path / 'cifar'}"
    for extra in ("--set space.in_channels=1", f"{cifar} --set space.in_channels=3"):
        path = tmp_path / "exp.yml"
        path.write_text(yaml.safe_dump(_with(command_extra=extra)))
        assert check_experiment(path) == [], extra


def test_known_channels_are_those_of_the_images_read(tmp_path):
    """The table the config is checked against agrees with the loaders, grayscale image folders included."""
    from PIL import Image

    from nni_visplugin.data.datasets import CHANNELS, load_dataset

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(10):
            Image.new("L", (8, 8), color=20 * i).save(tmp_path / label / f"{i}.png")
    assert load_dataset("imagefolder", tmp_path, image_size=8).input_shape == (CHANNELS["imagefolder"], 8, 8)
    assert load_dataset("digits").input_shape[0] == CHANNELS["digits"]


def test_run_search_refuses_other_channels_before_building_anything(tmp_path, monkeypatch):
    import dataclasses

    from nni_visplugin.stages import search
    from nni_visplugin.utils.errors import ConfigError
    from nni_visplugin.config.search import SearchConfig

    def built(*args, **kwargs):
        raise AssertionError("the search built its space or strategy before checking the channels")

    # A config made without create() skips its checks: the search itself must refuse the data.
    config = dataclasses.replace(SearchConfig.create({"epochs": 1}), space_kwargs={"in_channels": 3})
    monkeypatch.setattr(search.SPACES, "create", built)
    monkeypatch.setattr(search.STRATEGIES, "create", built)
    with pytest.raises(ConfigError, match="space.in_channels=3 but dataset digits has 1-channel images: "
                                          "remove the setting or use a dataset with 3 channels"):
        search.run_search(config, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # no checkpoint, no alphas: nothing ran


def test_trial_refuses_other_channels_at_start_up(tmp_path, monkeypatch):
    from nni_visplugin import trial
    from nni_visplugin.stages import search
    from nni_visplugin.utils.errors import ConfigError

    monkeypatch.setattr(search, "run_search", lambda *a, **k: pytest.fail("the trial started a search"))
    with pytest.raises(ConfigError, match="space.in_channels=3 but dataset fashion-mnist has 1-channel images"):
        trial.main(["--dataset", "fashion-mnist", "--set", "space.in_channels=3", "--out", str(tmp_path)])
