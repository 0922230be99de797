"""Search checkpoints: a search killed mid-way resumes to the same result; bad files never pass silently."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from nni_visplugin import create_strategy
from nni_visplugin.utils.checkpoints import CheckpointError, SearchCheckpoints
from nni_visplugin.data.loader import TensorLoader

from helpers.spaces import tiny_space


class Interrupt(Exception):
    pass


def _search(tiny_images, ckpt, stop_after=None, epochs=4, **cfg):
    x, y = tiny_images
    torch.manual_seed(7)
    space = tiny_space("darts_cell")
    loaders = (TensorLoader(x[:24], y[:24], 8, shuffle=True, seed=1), TensorLoader(x[24:], y[24:], 8, shuffle=True, seed=2),
               TensorLoader(x, y, 48))
    strategy = create_strategy("darts", epochs=epochs, arch_lr=0.01, **cfg)

    def on_epoch(epoch, record):
        if stop_after is not None and epoch == stop_after:
            raise Interrupt

    outcome = strategy.search(space, *loaders, on_epoch=on_epoch, checkpoint_dir=ckpt)
    return outcome


def _alphas(outcome):
    return json.dumps([h["alphas"] for h in outcome.history])


def test_interrupted_search_resumes_to_the_same_result(tiny_images, tmp_path):
    whole = _search(tiny_images, tmp_path / "whole")
    with pytest.raises(Interrupt):
        _search(tiny_images, tmp_path / "cut", stop_after=1)
    assert [p.name for p in SearchCheckpoints(tmp_path / "cut").files()] == ["epoch-0000.pt", "epoch-0001.pt"]
    resumed = _search(tiny_images, tmp_path / "cut")
    assert resumed.arch == whole.arch
    assert _alphas(resumed) == _alphas(whole)  # every epoch, the two restored from disk included
    assert [p.name for p in SearchCheckpoints(tmp_path / "cut").files()] == ["epoch-0002.pt", "epoch-0003.pt"]


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tiny_images, tmp_path, caplog):
    whole = _search(tiny_images, tmp_path / "whole")
    with pytest.raises(Interrupt):
        _search(tiny_images, tmp_path / "cut", stop_after=1)
    latest = tmp_path / "cut" / "epoch-0001.pt"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated, as by a crash during a copy
    with caplog.at_level("WARNING"):
        resumed = _search(tiny_images, tmp_path / "cut")
    assert "epoch-0001.pt" in caplog.text
    assert resumed.arch == whole.arch and _alphas(resumed) == _alphas(whole)


def test_unreadable_checkpoints_stop_the_search_naming_them(tiny_images, tmp_path):
    with pytest.raises(Interrupt):
        _search(tiny_images, tmp_path, stop_after=1)
    for f in SearchCheckpoints(tmp_path).files():
        f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="epoch-0000.pt"):
        _search(tiny_images, tmp_path)


def test_checkpoint_of_another_search_is_refused(tiny_images, tmp_path):
    with pytest.raises(Interrupt):
        _search(tiny_images, tmp_path, stop_after=0)
    with pytest.raises(CheckpointError, match="different search"):
        _search(tiny_images, tmp_path, order=2)


CMD = [sys.executable, "-m", "nni_visplugin.cli", "search", "--space", "darts_cell", "--epochs", "6", "--seed", "1",
       "--set", "space.width=4", "--set", "space.num_cells=2", "--set", "max_train_samples=400",
       "--set", "final_epochs=1", "--set", "num_threads=1"]  # one thread: no oversubscription on a busy machine


def test_search_killed_with_sigkill_resumes_to_the_same_result(tmp_path):
    reference = subprocess.run(CMD + ["--out", str(tmp_path / "ref")], capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(CMD + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "epoch-0001.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "search ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "result.json").exists()  # killed mid-search, not after it

    again = subprocess.run(CMD + ["--out", str(out)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr
    assert json.loads((out / "arch.json").read_text()) == json.loads((tmp_path / "ref" / "arch.json").read_text())
    ref_alphas = json.loads((tmp_path / "ref" / "alphas.json").read_text())
    got_alphas = json.loads((out / "alphas.json").read_text())
    assert [h["alphas"] for h in got_alphas] == [h["alphas"] for h in ref_alphas]
