"""The command line: help on every option, one version, one error path."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json

import pytest

from nni_visplugin import cli
from nni_visplugin.config.retrain import RetrainConfig


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sub in _subcommands().items()
               for a in sub._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing, f"options without help: {missing}"


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"nni-visplugin {importlib.metadata.version('nni-visplugin')}"


def test_retrain_flags_mirror_the_config_fields():
    retrain = _subcommands()["retrain"]
    options = {a.dest: a for a in retrain._actions}
    for f in dataclasses.fields(RetrainConfig):
        if f.name in ("arch", "progress", "resume"):  # --arch (required), --quiet and --fresh say these
            continue
        assert f.name in options, f"retrain has no flag for RetrainConfig.{f.name}"
        assert options[f.name].default == f.default, f.name
        assert f.metadata["nni_visplugin"]["help"] in options[f.name].help.replace("%%", "%")
    args = retrain.parse_args(["--arch", "a", "--out", "o", "--epochs", "3", "--holdout-val"])
    assert args.epochs == 3 and args.holdout_val is True


def _corrupt_arch(tmp_path):
    (tmp_path / "arch.json").write_text("{not json")
    (tmp_path / "result.json").write_text("{}")
    return ["retrain", "--arch", str(tmp_path / "arch.json"), "--out", str(tmp_path / "out")]


def _foreign_arch(tmp_path):
    (tmp_path / "arch.json").write_text(json.dumps({"normal/op_0_0": "conv_99x99"}))
    (tmp_path / "result.json").write_text(json.dumps({"space": "darts_cell", "space_kwargs": {"width": 4}}))
    return ["retrain", "--arch", str(tmp_path / "arch.json"), "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("argv, code, words", [
    (lambda t: ["search", "--space", "nope", "--out", str(t / "o")], 2, "unknown space 'nope'; known: darts_cell"),
    (lambda t: ["search", "--set", "space.width=0", "--out", str(t / "o")], 2, "width must be an integer >= 2, got 0"),
    (lambda t: ["search", "--dataset", "fashion-mnist", "--data-dir", str(t / "none"), "--out", str(t / "o")], 2,
     "does not exist"),
    (lambda t: ["search", "--set", "epochs=-1", "--out", str(t / "o")], 2, "epochs must be an integer >= 1, got -1"),
    (lambda t: ["search", "--set", "arch_lr=fast", "--out", str(t / "o")], 2, "arch_lr must be a number, got 'fast'"),
    (lambda t: ["search", "--dataset", "mnist2", "--out", str(t / "o")], 2, "unknown dataset 'mnist2'"),
    (lambda t: ["retrain", "--arch", "a", "--out", "o", "--epochs", "many"], 2, "argument --epochs: invalid int value"),
    (lambda t: ["retrain", "--arch", "a", "--out", "o", "--lr", "0"], 2, "lr must be a number > 0, got 0.0"),
    (_corrupt_arch, 2, "is unreadable or corrupt"),
    (_foreign_arch, 2, "does not fit space 'darts_cell'"),
    (lambda t: ["export", str(t / "nowhere")], 1, "model.pt is missing"),
    (lambda t: ["export", str(t), "--format", "tflite"], 2, "invalid choice: 'tflite'"),
    (lambda t: ["best", "no-such-experiment", "--root", str(t)], 2, "no experiment directory for 'no-such-experiment'"),
    (lambda t: ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
])
def test_a_users_mistake_is_one_line_and_a_documented_exit_code(tmp_path, capsys, argv, code, words):
    try:
        exit_code = cli.main(argv(tmp_path))
    except SystemExit as stop:  # argparse's own refusals
        exit_code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_code == code
    assert len(err) == 1 and err[0].startswith("nni-visplugin: error: ") and words in err[0], err


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise KeyError("a bug, not a user's mistake")

    monkeypatch.setattr(cli, "_cmd_list", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["list"])
