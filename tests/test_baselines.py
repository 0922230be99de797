"""The baseline architectures of nni-visplugin baselines: points of the searched space."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nni_visplugin.nas.fixed import validate_arch
from nni_visplugin.stages import baselines
from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.spaces.darts_cell import PRIMITIVES
from helpers.retrain import fake_search_dir  # noqa: E402  (tests/retrain_helpers.py)
from helpers.spaces import tiny_kwargs  # noqa: E402  (tests/spaces_helpers.py)


DENSE = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "conv_3x3", "conv_1x1"]


@pytest.mark.parametrize("primitives", [None, DENSE])
def test_random_architectures_are_seeded_points_of_the_space_without_none(primitives):
    kwargs = tiny_kwargs("darts_cell", image_size=16) | ({"primitives": primitives} if primitives else {})
    kwargs["num_nodes"] = 4
    archs = [baselines.random_arch("darts_cell", kwargs, seed) for seed in (0, 1, 0)]
    assert archs[0] == archs[2] and archs[0] != archs[1]
    ops = set()
    for arch in archs:
        validate_arch("darts_cell", kwargs, arch)
        ops |= {v for k, v in arch.items() if "/op_" in k}
    assert "none" not in ops and len(ops) >= 3
    assert ops <= set(primitives or PRIMITIVES)


@pytest.mark.parametrize("primitives, conv", [(None, "sep_conv_3x3"), (DENSE, "conv_3x3")])
def test_hand_cell_is_a_chain_with_the_spaces_3x3_convolution(primitives, conv):
    kwargs = tiny_kwargs("darts_cell", image_size=16) | ({"primitives": primitives} if primitives else {})
    kwargs["num_nodes"] = 3
    arch = baselines.hand_arch("darts_cell", kwargs)
    validate_arch("darts_cell", kwargs, arch)
    assert [arch[f"normal/input_{i}"] for i in range(3)] == [[0, 1], [1, 2], [2, 3]]
    assert {arch[f"reduce/input_{i}"][0] for i in range(3)} == {0}
    assert {v for k, v in arch.items() if k.startswith("normal/op_")} == {conv}
    assert {v for k, v in arch.items() if k.startswith("reduce/op_")} == {conv, "max_pool_3x3"}


def _tiny_config(tmp_path: Path) -> Path:
    recipe = {"dataset": "digits", "epochs": 1, "batch_size": 32, "max_train_samples": 100, "latency_rounds": 1,
              "threads": 1, "seeds": [0], "jobs": 1}
    config = tmp_path / "config.yml"
    config.write_text(json.dumps({"pipeline": {"out": str(tmp_path / "pipe"), "retrain": recipe}}))
    return config


def test_baselines_in_two_sittings_keep_what_is_done_and_say_what_is_missing(tmp_path, capsys):
    search = fake_search_dir(tmp_path / "search")
    out = tmp_path / "baselines"
    common = ["--config", str(_tiny_config(tmp_path)), "--search", str(search), "--random", "2", "--out", str(out)]

    assert baselines.main(common + ["--only", "random-1", "hand", "--jobs", "2"]) == 0  # two worker processes
    assert "not retrained yet: random-0" in capsys.readouterr().out
    assert not (out / "random-0" / "metrics.json").exists()
    rows = json.loads((out / "baselines.json").read_text())
    first = {name: json.loads((out / name / "metrics.json").read_text()) for name in ("random-1", "hand")}
    assert [r["model"] for r in rows] == ["random architectures (mean of 1)", "random architecture random-1",
                                          "hand-designed cell (3x3 separable convolutions)"]
    assert "1 of 2 not retrained yet" in rows[0]["note"]
    assert rows[0]["test_accuracy"] == first["random-1"]["test_accuracy"]
    assert rows[2]["params"] == first["hand"]["num_params"]
    assert first["hand"]["recipe"]["epochs"] == 1 and first["hand"]["recipe"]["max_train_samples"] == 100
    assert first["hand"]["threads"] == 1 and "1 thread(s)" in rows[2]["note"]

    assert baselines.main(common + ["--jobs", "1"]) == 0  # in this process
    printed = capsys.readouterr().out
    assert "random-1: done before" in printed and "hand: done before" in printed
    assert "not retrained yet" not in printed
    assert "random-0: epoch 1/1 loss" in printed  # a line per epoch, named
    for name, metrics in first.items():  # kept, not retrained again
        assert json.loads((out / name / "metrics.json").read_text()) == metrics
    rows = json.loads((out / "baselines.json").read_text())
    accs = [json.loads((out / f"random-{k}" / "metrics.json").read_text())["test_accuracy"] for k in (0, 1)]
    assert rows[0]["model"] == "random architectures (mean of 2)"
    assert rows[0]["test_accuracy"] == pytest.approx(sum(accs) / 2)
    assert "not retrained yet" not in rows[0]["note"]
    random0 = json.loads((out / "random-0" / "arch" / "arch.json").read_text())
    assert random0 == baselines.random_arch("darts_cell", json.loads((search / "result.json").read_text())["space_kwargs"], 0)


def test_baselines_refuse_unknown_models_and_missing_searches(tmp_path):
    config = str(_tiny_config(tmp_path))
    search = fake_search_dir(tmp_path / "search")
    with pytest.raises(ConfigError, match="unknown model.*random-7"):
        baselines.main(["--config", config, "--search", str(search), "--random", "2", "--only", "random-7"])
    with pytest.raises(ConfigError, match="result.json not found"):
        baselines.main(["--config", config, "--search", str(tmp_path / "nowhere")])


def test_hand_matched_is_the_hand_cell_at_the_width_of_the_searched_cells_size(tmp_path, capsys):
    search = fake_search_dir(tmp_path / "search")
    result = json.loads((search / "result.json").read_text())
    pick = json.loads((search / "arch.json").read_text())
    hand = baselines.hand_arch("darts_cell", result["space_kwargs"])
    width, params, target = baselines.matched_width("darts_cell", result, hand, pick, 0, 0)
    assert target == baselines.count_params("darts_cell", result, pick, 0, 0)
    assert params == baselines.count_params("darts_cell", result, hand, width, 0)
    searched = result["space_kwargs"]["width"]
    assert width % 2 == 0 and 2 <= width <= 2 * searched
    for other in range(2, 2 * searched + 1, 2):  # no other even width comes closer to the searched cell's size
        assert abs(baselines.count_params("darts_cell", result, hand, other, 0) - target) >= abs(params - target)

    out = tmp_path / "baselines"
    argv = ["--config", str(_tiny_config(tmp_path)), "--search", str(search), "--random", "1", "--out", str(out),
            "--only", "hand-matched"]
    assert baselines.main(argv) == 0
    assert f"hand-matched: width {width}, {params:,} parameters (the searched cell: {target:,})" in capsys.readouterr().out
    metrics = json.loads((out / "hand-matched" / "metrics.json").read_text())
    assert metrics["num_params"] == params and metrics["config"]["width"] == width
    assert json.loads((out / "hand-matched" / "arch" / "arch.json").read_text()) == hand
    rows = json.loads((out / "baselines.json").read_text())
    assert [r["model"] for r in rows] == [f"hand-designed cell (3x3 separable convolutions, width {width}: "
                                          "the searched cell's size)"]
    assert rows[0]["params"] == params
