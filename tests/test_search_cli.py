"""The standalone search (CLI and API): files written, model rebuilt, errors in one line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from nni.nas.nn.pytorch import InputChoice, LayerChoice

import nni_visplugin
from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.config.search import SearchConfig
from nni_visplugin.data.datasets import load_dataset

CLI = [sys.executable, "-m", "nni_visplugin.cli"]


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    proc = subprocess.run(CLI + ["search", "--space", "darts_cell", "--dataset", "digits", "--epochs", "2",
                                 "--seed", "3", "--set", "space.width=4", "--set", "space.num_cells=2",
                                 "--set", "final_epochs=2", "--set", "max_train_samples=400",
                                 "--set", "arch_lr=0.003", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_search_writes_arch_alphas_and_result(search_dir):
    result = json.loads((search_dir / "result.json").read_text())
    for key in ("val_accuracy", "input_shape", "num_classes", "space", "space_kwargs", "hyperparameters",
                "seed", "wall_seconds"):
        assert key in result, key
    assert result["input_shape"] == [1, 8, 8] and result["num_classes"] == 10
    assert result["seed"] == 3 and result["hyperparameters"]["arch_lr"] == 0.003
    assert result["space"] == "darts_cell" and result["space_kwargs"]["width"] == 4
    assert 0.0 <= result["val_accuracy"] <= 1.0
    alphas = json.loads((search_dir / "alphas.json").read_text())
    assert result["alpha_entropy"] == alphas[-1]["alpha_entropy"]
    assert result["decided"] == (result["alpha_entropy"] < result["entropy_threshold"])
    assert result["collapsed"] == (result["kept_ops"] > 0 and result["learnable_ops"] == 0)
    assert (result["warning"] is None) == (result["decided"] and not result["collapsed"])
    alphas = json.loads((search_dir / "alphas.json").read_text())
    assert [h["epoch"] for h in alphas] == [0, 1]
    assert "normal/op_0_0" in alphas[0]["alphas"]
    for h in alphas:  # the health monitor's record of each epoch
        assert 0.0 <= h["alpha_entropy"] <= 1.0 and h["normal_skips"] >= 0
    arch = json.loads((search_dir / "arch.json").read_text())
    assert all(v != "none" for v in arch.values())


def test_load_model_rebuilds_the_fixed_trained_network(search_dir):
    model = nni_visplugin.load_model(search_dir)
    assert not any(isinstance(m, (LayerChoice, InputChoice)) for m in model.modules())
    # the weights are the trained ones: the saved validation accuracy is reproduced
    splits = load_dataset("digits")
    with torch.no_grad():
        acc = (model(splits.val[0]).argmax(1) == splits.val[1]).float().mean().item()
    assert acc == pytest.approx(json.loads((search_dir / "result.json").read_text())["val_accuracy"], abs=1e-6)
    # and NNI's own freeze accepts the same architecture
    arch = json.loads((search_dir / "arch.json").read_text())
    result = json.loads((search_dir / "result.json").read_text())
    nni_visplugin.create_space("darts_cell", **result["space_kwargs"]).freeze(arch)


def test_load_model_refuses_a_tampered_architecture(search_dir, tmp_path):
    for name in ("result.json", "model.pt"):
        (tmp_path / name).write_bytes((search_dir / name).read_bytes())
    arch = json.loads((search_dir / "arch.json").read_text())
    arch["normal/op_0_0"] = "os.system"
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(ValueError, match="normal/op_0_0"):
        nni_visplugin.load_model(tmp_path)


def test_list_command():
    out = subprocess.run(CLI + ["list"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "darts_cell" in out.stdout and "seed_cells" in out.stdout and "darts" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--space", "nas201"], "unknown space 'nas201'"),
    (["--set", "space.depth=3"], "unknown setting 'space.depth'"),
    (["--set", "arch_lr=fast"], "arch_lr must be a number"),
    (["--set", "epochs=2.5"], "epochs must be an integer"),
    (["--set", "order=3"], "order must be 1 or 2"),
    (["--set", "nonsense"], "key=value"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fm"], "/nonexistent/fm"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    out = subprocess.run(CLI + ["search", "--out", str(tmp_path)] + args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_config_overrides_and_types():
    c = SearchConfig.create({"epochs": 4.0, "space.width": 8, "seed": 2, "order": 2})
    assert c.strategy_kwargs["epochs"] == 4 and isinstance(c.strategy_kwargs["epochs"], int)
    assert c.space_kwargs["width"] == 8 and c.seed == 2
    with pytest.raises(ConfigError, match="set from the dataset"):
        SearchConfig.create({"space.num_classes": 3})
    with pytest.raises(TypeError):
        c.space_kwargs["width"] = 3  # frozen


def test_best_command_ranks_trials(tmp_path, search_dir):
    for trial, acc in (("A", 0.5), ("B", 0.9)):
        d = tmp_path / "exp1" / "environments" / "local-env" / "trials" / trial  # NNI's local layout
        d.mkdir(parents=True)
        result = json.loads((search_dir / "result.json").read_text())
        result["val_accuracy"] = acc
        (d / "result.json").write_text(json.dumps(result))
    out = subprocess.run(CLI + ["best", "exp1", "--root", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"best: {tmp_path / 'exp1' / 'environments' / 'local-env' / 'trials' / 'B'}"
    missing = subprocess.run(CLI + ["best", "nope", "--root", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 2 and "no experiment directory" in missing.stderr
