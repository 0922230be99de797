"""Retraining a derived architecture: files and metrics, the test split read once at the end,
determinism, resizing, augmentation, and one-line refusals."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import nni_visplugin
from nni_visplugin.stages import retrain as retrain_module
from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.config.search import SearchConfig
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.data.datasets import load_dataset
from nni_visplugin.config.retrain import RetrainConfig
from nni_visplugin.data.augment import TensorAugment, make_augment
from nni_visplugin.nas.fixed import count_flops
from nni_visplugin.stages.retrain import retrain
from nni_visplugin.nas.training import evaluate, train_from_scratch

from helpers.retrain import fake_search_dir

CLI = [sys.executable, "-m", "nni_visplugin.cli"]
# Small enough for seconds on a shared 2-core CPU: 100 training images plus the 287 of validation.
TINY = dict(epochs=2, max_train_samples=100, latency_rounds=1, progress=False, threads=1)


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    return fake_search_dir(tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def retrained(search_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("retrain")
    metrics = retrain(RetrainConfig(arch=str(search_dir / "arch.json"), **TINY), out)
    return out, metrics


def test_metrics_and_files(retrained):
    out, metrics = retrained
    assert metrics == json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "num_params", "flops", "latency_ms", "seed", "epochs", "wall_seconds",
                "train_seconds", "curve", "recipe", "dataset", "space", "space_kwargs", "arch", "device",
                "torch_version", "train_split", "val_accuracy"):
        assert key in metrics, key
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["val_accuracy"] is None
    assert metrics["train_split"] == "train+val"
    assert [e["epoch"] for e in metrics["curve"]] == [0, 1]
    assert all(e["train_loss"] > 0 and 0 <= e["train_accuracy"] <= 1 for e in metrics["curve"])
    assert metrics["curve"][1]["lr"] < metrics["curve"][0]["lr"] == 0.05  # cosine
    assert metrics["recipe"]["label_smoothing"] == 0.1 and metrics["recipe"]["crop_padding"] == 1
    assert metrics["recipe"]["horizontal_flip"] is False  # digits are not mirrored
    assert metrics["latency_ms"] > 0 and 0 < metrics["train_seconds"] < metrics["wall_seconds"]
    assert metrics["space_kwargs"]["affine"] is True and metrics["space_kwargs"]["width"] == 4

    splits = load_dataset("digits", max_train_samples=100, with_test=True)
    assert metrics["num_train_samples"] == len(splits.train[1]) + len(splits.val[1])
    assert metrics["num_test_samples"] == len(splits.test[1])
    # load_model rebuilds the retrained network from the output directory, with its weights ...
    model = nni_visplugin.load_model(out)
    assert metrics["num_params"] == sum(p.numel() for p in model.parameters())
    assert metrics["flops"] == count_flops(model, (1, 8, 8)) > 0
    assert evaluate(model, TensorLoader(*splits.test, 256)) == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    # ... saved as a plain state dict
    state = torch.load(out / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    assert json.loads((out / "arch.json").read_text()) == metrics["arch"]


def test_test_split_is_read_only_after_the_last_epoch(search_dir, tmp_path, monkeypatch):
    """Every operation on the test tensors is logged next to the training epochs: none may come
    before the last epoch has ended, and the final evaluation must really read them."""
    events: list[str] = []

    class Tripwire(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            events.append("test read")
            return super().__torch_function__(func, types, args, kwargs)

    real_load = retrain_module.load_dataset

    def load_with_tripwire(*args, **kwargs):
        splits = real_load(*args, **kwargs)
        assert kwargs.get("with_test") is True
        splits.test = tuple(t.as_subclass(Tripwire) for t in splits.test)
        events.append("loaded")
        return splits

    monkeypatch.setattr(retrain_module, "load_dataset", load_with_tripwire)
    metrics = retrain(RetrainConfig(arch=str(search_dir), **TINY), tmp_path,
                      on_epoch=lambda record: events.append(f"epoch {record['epoch']}"))
    assert events[0] == "loaded" and "test read" in events
    first_read = events.index("test read")
    assert events[:first_read] == ["loaded", "epoch 0", "epoch 1"]
    assert all(e == "test read" for e in events[first_read:])
    # the test accuracy is the one of the tensors read at the end
    splits = load_dataset("digits", max_train_samples=100, with_test=True)
    assert evaluate(nni_visplugin.load_model(tmp_path), TensorLoader(*splits.test, 256)) == metrics["test_accuracy"]


def test_holdout_val_trains_on_train_only_and_reports_val(search_dir, tmp_path, monkeypatch):
    asked = []
    real_load = retrain_module.load_dataset
    monkeypatch.setattr(retrain_module, "load_dataset", lambda *a, **kw: asked.append(kw) or real_load(*a, **kw))
    metrics = retrain(RetrainConfig(arch=str(search_dir), holdout_val=True, erase=0.5, **TINY), tmp_path)
    assert metrics["recipe"]["erase"] == metrics["recipe"]["random_erasing"] == 0.5
    # model selection on the validation split: the test split is not even loaded
    assert [kw.get("with_test") for kw in asked] == [False]
    assert metrics["test_accuracy"] is None and metrics["num_test_samples"] == 0
    assert metrics["test_split"].startswith("not read")
    splits = load_dataset("digits", max_train_samples=100)
    assert metrics["train_split"] == "train" and metrics["num_train_samples"] == len(splits.train[1])
    assert all(0 <= e["val_accuracy"] <= 1 for e in metrics["curve"])
    assert metrics["val_accuracy"] == metrics["curve"][-1]["val_accuracy"]


def test_same_seed_same_run(search_dir, tmp_path):
    def run(seed: int, name: str):
        config = RetrainConfig(arch=str(search_dir), seed=seed, **TINY)
        metrics = retrain(config, tmp_path / name)
        return metrics, torch.load(tmp_path / name / "model.pt", weights_only=True)

    (m1, w1), (m2, w2), (m3, w3) = run(5, "a"), run(5, "b"), run(6, "c")
    untimed = lambda curve: [{k: v for k, v in e.items() if k != "seconds"} for e in curve]  # noqa: E731
    assert untimed(m1["curve"]) == untimed(m2["curve"])
    assert m1["test_accuracy"] == m2["test_accuracy"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)  # the seed matters


def test_wider_and_deeper_retraining(search_dir, retrained, tmp_path):
    _, base = retrained
    metrics = retrain(RetrainConfig(arch=str(search_dir), width=8, cells=3, **{**TINY, "epochs": 1}), tmp_path)
    assert metrics["space_kwargs"]["width"] == 8 and metrics["space_kwargs"]["num_cells"] == 3
    assert metrics["num_params"] > 2 * base["num_params"]
    assert metrics["flops"] > base["flops"]
    model = nni_visplugin.load_model(tmp_path)  # the saved kwargs rebuild the resized network
    assert len(model.cells) == 3


def _corrupt_arch(d):
    (d / "arch.json").write_text('{"normal/input_0": [0, ')


def _tampered_label(d):
    arch = json.loads((d / "arch.json").read_text())
    arch["normal/op_0_0"] = "conv_99x99"
    (d / "arch.json").write_text(json.dumps(arch))


def _three_channels(d):
    result = json.loads((d / "result.json").read_text())
    result["input_shape"] = [3, 8, 8]
    (d / "result.json").write_text(json.dumps(result))


@pytest.mark.parametrize("damage, message, extra", [
    (lambda d: (d / "arch.json").unlink(), "architecture file .*arch.json is missing", {}),
    (lambda d: (d / "result.json").unlink(), "search result file .*result.json is missing", {}),
    (_corrupt_arch, "arch.json is unreadable or corrupt", {}),
    (lambda d: (d / "result.json").write_text("[1, 2]"), "not a search's result.json", {}),
    (_tampered_label, "'conv_99x99' for 'normal/op_0_0' is not allowed", {}),
    (_three_channels, "searched on 3-channel images .* dataset digits has 1-channel images", {}),
    (lambda d: None, "warmup_epochs must be smaller than epochs", {"warmup_epochs": 2}),
    (lambda d: None, "augment must be one of", {"augment": "mixup"}),
])
def test_bad_arch_or_dataset_is_refused(search_dir, tmp_path, damage, message, extra):
    d = tmp_path / "search"
    d.mkdir()
    for name in ("arch.json", "result.json"):
        (d / name).write_bytes((search_dir / name).read_bytes())
    damage(d)
    with pytest.raises(ConfigError, match=message):
        retrain(RetrainConfig(arch=str(d / "arch.json"), **{**TINY, **extra}), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_resizing_a_space_without_width_is_refused(tmp_path):
    d = fake_search_dir(tmp_path / "search", "proxyless_mobile")
    with pytest.raises(ConfigError, match="space 'proxyless_mobile' has no 'width' argument, so --width"):
        retrain(RetrainConfig(arch=str(d), width=16, **TINY), tmp_path / "out")


def test_augmentation_crops_with_black_padding_and_flips_only_where_it_makes_sense():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    aug = TensorAugment(padding=1, flip=False, fill=[-7.0], seed=0)
    outs = [aug(x) for _ in range(20)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.equal(o, x) for o in outs)  # shifted at least once
    for o in outs:  # every output is a window of the padded image: original pixels or the fill value
        assert set(o.unique().tolist()) <= set(x.unique().tolist()) | {-7.0}
    again = TensorAugment(padding=1, flip=False, fill=[-7.0], seed=0)
    assert all(torch.equal(o, again(x)) for o in outs)  # seeded

    flipper = TensorAugment(padding=0, flip=True, fill=[0.0], seed=1)
    flips = [flipper(x) for _ in range(20)]
    assert all(torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(2)) for f in flips for i in range(2))
    assert any(torch.equal(f[0], x[0].flip(2)) for f in flips)

    mean, std = [0.5], [0.25]
    assert make_augment("auto", "digits", (1, 8, 8), mean, std, 0).describe() == {"crop_padding": 1, "horizontal_flip": False,
                                                                          "random_erasing": 0.0}
    assert make_augment("auto", "fashion-mnist", (1, 28, 28), mean, std, 0, 0.5).describe() == {
        "crop_padding": 2, "horizontal_flip": True, "random_erasing": 0.5}
    assert make_augment("auto", "cifar10", (3, 32, 32), mean * 3, std * 3, 0).describe()["horizontal_flip"] is True
    assert make_augment("crop", "cifar10", (3, 32, 32), mean * 3, std * 3, 0).describe()["horizontal_flip"] is False
    assert make_augment("none", "cifar10", (3, 32, 32), mean * 3, std * 3, 0) is None
    assert make_augment("none", "cifar10", (3, 32, 32), mean * 3, std * 3, 0, 0.5).describe() == {
        "crop_padding": 0, "horizontal_flip": False, "random_erasing": 0.5}
    assert make_augment("auto", "digits", (1, 8, 8), mean, std, 0).fill.item() == -2.0  # a black pixel, normalised


def _paper_erasing(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """Zhong et al. 2020, algorithm 1, literally (p = 1): draw until the rectangle fits."""
    while True:
        area = rng.uniform(0.02, 0.4) * h * w
        ratio = rng.uniform(0.3, 1 / 0.3)
        eh, ew = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        top, left = int(rng.uniform(0, 1) * h), int(rng.uniform(0, 1) * w)
        if eh >= 1 and ew >= 1 and top + eh <= h and left + ew <= w:
            return top, left, eh, ew


def test_random_erasing_follows_the_papers_algorithm():
    n, h, w = 4000, 28, 28
    x = torch.full((n, 1, h, w), 5.0)
    out = TensorAugment(padding=0, flip=False, fill=[0.0], seed=0, erase=1.0)(x)
    erased = out != 5.0  # the noise never lands exactly on 5
    boxes = []
    for i in range(n):
        rows = erased[i, 0].any(1).nonzero().flatten()
        cols = erased[i, 0].any(0).nonzero().flatten()
        assert len(rows) and len(cols), f"image {i} was not erased"
        top, left, eh, ew = rows[0].item(), cols[0].item(), len(rows), len(cols)
        # one solid rectangle, nothing outside it touched
        assert erased[i, 0, top:top + eh, left:left + ew].all() and erased[i].sum() == eh * ew
        assert rows[-1] - rows[0] + 1 == eh and cols[-1] - cols[0] + 1 == ew
        boxes.append((top, left, eh, ew))
    ours = np.array(boxes, dtype=float)
    rng = np.random.default_rng(0)
    paper = np.array([_paper_erasing(rng, h, w) for _ in range(n)], dtype=float)
    # the same distribution: area, aspect ratio and position (means within ~4 standard errors)
    for name, a, b in (("area", ours[:, 2] * ours[:, 3], paper[:, 2] * paper[:, 3]),
                       ("log aspect", np.log(ours[:, 2] / ours[:, 3]), np.log(paper[:, 2] / paper[:, 3])),
                       ("top", ours[:, 0], paper[:, 0]), ("left", ours[:, 1], paper[:, 1])):
        se = math.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 4 * se, (name, a.mean(), b.mean())
    assert (ours[:, 2] * ours[:, 3]).max() <= 0.4 * h * w * 1.2 and (ours[:, 2] * ours[:, 3]).min() >= 4

    # probability 0.5: about half the images; seeded; another seed draws other rectangles
    half = TensorAugment(padding=0, flip=False, fill=[0.0], seed=3, erase=0.5)(x)
    share = (half != 5.0).flatten(1).any(1).float().mean().item()
    assert abs(share - 0.5) < 0.04
    assert torch.equal(half, TensorAugment(padding=0, flip=False, fill=[0.0], seed=3, erase=0.5)(x))
    assert not torch.equal(half, TensorAugment(padding=0, flip=False, fill=[0.0], seed=4, erase=0.5)(x))
    with pytest.raises(ValueError, match="probability"):
        TensorAugment(padding=0, flip=False, fill=[0.0], erase=1.5)
    with pytest.raises(ConfigError, match="erase"):
        RetrainConfig(arch="x", erase=-0.1)


def test_warmup_then_cosine(tiny_images):
    x, y = tiny_images
    records = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    train_from_scratch(model, TensorLoader(x, y, 16), 4, lr=0.3, warmup_epochs=2, on_record=records.append)
    assert [r["lr"] for r in records] == pytest.approx([0.1, 0.2, 0.3, 0.15])
    with pytest.raises(ValueError, match="warmup_epochs"):
        train_from_scratch(model, TensorLoader(x, y, 16), 2, warmup_epochs=2)


def test_retrain_after_a_real_search(tmp_path):
    config = SearchConfig.create({"epochs": 1, "seed": 1, "space.width": 4, "space.num_cells": 2, "space.num_nodes": 2,
                                  "final_epochs": 1, "max_train_samples": 100, "num_threads": 1})
    nni_visplugin.run_search(config, tmp_path / "search")
    metrics = retrain(RetrainConfig(arch=str(tmp_path / "search" / "arch.json"), **{**TINY, "epochs": 1}),
                      tmp_path / "retrain")
    assert metrics["arch"] == json.loads((tmp_path / "search" / "arch.json").read_text())
    assert metrics["space_kwargs"]["num_nodes"] == 2
    nni_visplugin.load_model(tmp_path / "retrain")
    nni_visplugin.load_model(tmp_path / "search")  # search directories still load


def test_cli_retrain_quiet_and_one_line_errors(search_dir, tmp_path):
    out = subprocess.run(CLI + ["retrain", "--arch", str(search_dir / "arch.json"), "--epochs", "1",
                                "--max-train-samples", "100", "--threads", "1", "--quiet", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert set(json.loads(out.stdout.splitlines()[0])) >= {"test_accuracy", "num_params", "flops", "latency_ms"}
    assert "batch/s" not in out.stderr and " INFO " not in out.stderr  # quiet: no bar, no log lines
    assert (tmp_path / "r" / "metrics.json").is_file()

    bad = subprocess.run(CLI + ["retrain", "--arch", str(tmp_path / "nowhere" / "arch.json"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"nni-visplugin: error: architecture file {tmp_path / 'nowhere' / 'arch.json'} "
                                               "is missing; --arch takes the arch.json of a search output directory"]


class _Cut(Exception):
    """Stands for a kill between two epochs."""


def _cut_after(epochs_done: int):
    def on_epoch(entry):
        if entry["epoch"] + 1 == epochs_done:
            raise _Cut
    return on_epoch


def test_a_retraining_cut_short_continues_to_the_same_result(search_dir, tmp_path):
    # Erasing, crops, flips off (digits), warm-up and shuffling: every generator the run draws from.
    config = RetrainConfig(arch=str(search_dir / "arch.json"), **{**TINY, "epochs": 3}, warmup_epochs=1, erase=0.5)
    whole = retrain(config, tmp_path / "whole")
    with pytest.raises(_Cut):
        retrain(config, tmp_path / "cut", on_epoch=_cut_after(2))
    assert not (tmp_path / "cut" / "metrics.json").exists()
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]

    seen = []
    resumed = retrain(config, tmp_path / "cut", on_epoch=seen.append)
    assert [e["epoch"] for e in seen] == [2]  # only the missing epoch was trained
    assert resumed["resumed_at_epochs"] == [2] and whole["resumed_at_epochs"] == []
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in whole["curve"]]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in resumed["curve"]] == strip
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "cut" / "checkpoints").exists()  # removed once metrics.json is written


def test_a_checkpoint_of_another_retraining_is_refused_and_fresh_starts_over(search_dir, tmp_path):
    config = RetrainConfig(arch=str(search_dir / "arch.json"), **{**TINY, "epochs": 3})
    with pytest.raises(_Cut):
        retrain(config, tmp_path / "r", on_epoch=_cut_after(1))
    cli = CLI + ["retrain", "--arch", str(search_dir / "arch.json"), "--epochs", "3", "--max-train-samples", "100",
                 "--threads", "1", "--quiet", "--out", str(tmp_path / "r")]
    other = subprocess.run(cli + ["--seed", "1"], capture_output=True, text=True, timeout=300)
    assert other.returncode == 2
    [line] = other.stderr.strip().splitlines()
    assert "epoch-0001.pt is a checkpoint of another retraining (it differs in seed)" in line and "--fresh" in line
    assert (tmp_path / "r" / "checkpoints" / "epoch-0001.pt").exists()  # refused, not deleted

    fresh = subprocess.run(cli + ["--seed", "1", "--fresh"], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["seed"] == 1 and metrics["resumed_at_epochs"] == [] and len(metrics["curve"]) == 3


def test_unreadable_checkpoints_stop_the_retraining_with_their_names(search_dir, tmp_path):
    config = RetrainConfig(arch=str(search_dir / "arch.json"), **{**TINY, "epochs": 3})
    with pytest.raises(_Cut):
        retrain(config, tmp_path / "r", on_epoch=_cut_after(2))
    files = sorted((tmp_path / "r" / "checkpoints").iterdir())
    files[-1].write_bytes(b"truncated")
    seen = []
    assert retrain(config, tmp_path / "r", on_epoch=seen.append)["resumed_at_epochs"] == [1]  # the one before
    assert [e["epoch"] for e in seen] == [1, 2]

    with pytest.raises(_Cut):
        retrain(config, tmp_path / "s", on_epoch=_cut_after(2))
    for f in (tmp_path / "s" / "checkpoints").iterdir():
        f.write_bytes(b"")
    with pytest.raises(ConfigError, match="no readable checkpoint among: .*epoch-0002.pt.*--fresh"):
        retrain(config, tmp_path / "s")
