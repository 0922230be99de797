"""Export of retrained networks: ONNX through onnxruntime and TorchScript through torch.jit.load
reproduce PyTorch, with the input normalisation inside the exported graph."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import nni_visplugin
from nni_visplugin.stages import export as export_module
from nni_visplugin.data.datasets import load_dataset
from nni_visplugin.stages.export import ExportError, export_model
from nni_visplugin.config.retrain import RetrainConfig
from nni_visplugin.stages.retrain import retrain

from helpers.retrain import fake_search_dir

ort = pytest.importorskip("onnxruntime", reason="pip install 'nni-visplugin[export]'")
CLI = [sys.executable, "-m", "nni_visplugin.cli"]


@pytest.fixture(scope="module", params=["darts_cell", "proxyless_mobile"])
def retrained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    search = fake_search_dir(root / "search", request.param)
    retrain(RetrainConfig(arch=str(search), epochs=1, max_train_samples=100, latency_rounds=1, progress=False,
                          threads=1), root / "retrain")
    return root / "retrain"


@pytest.fixture(scope="module")
def raw_test_images():
    """The digits test split as a deployment sees it: pixel values / 16, not normalised."""
    splits = load_dataset("digits", max_train_samples=100, with_test=True)
    x, y = splits.test
    return x * torch.tensor(splits.std).view(1, -1, 1, 1) + torch.tensor(splits.mean).view(1, -1, 1, 1), y, splits


def test_onnx_matches_pytorch_with_normalisation_built_in(retrained, raw_test_images):
    report = export_model(retrained, "onnx")
    path = retrained / "model.onnx"
    assert report["file"] == str(path) and report["max_abs_diff"] < 1e-4
    assert report["verified_batch_sizes"] == [1, 8] and report["input"]["normalization_built_in"] is True
    assert json.loads((retrained / "model.onnx.json").read_text()) == report

    # Independently of the exporter's own check: raw images in, the PyTorch model's logits out.
    x_raw, y, splits = raw_test_images
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    onnx_logits = session.run(None, {"image": x_raw[:64].numpy()})[0]
    model = nni_visplugin.load_model(retrained)
    with torch.no_grad():
        torch_logits = model(splits.test[0][:64]).numpy()  # the normalised tensors it was trained on
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4
    # the whole test split through onnxruntime gives the test accuracy retraining reported
    all_logits = session.run(None, {"image": x_raw.numpy()})[0]
    metrics = json.loads((retrained / "metrics.json").read_text())
    assert (all_logits.argmax(1) == y.numpy()).mean() == pytest.approx(metrics["test_accuracy"], abs=1e-9)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_loads_and_matches(retrained, raw_test_images):
    out = retrained / "exported" / "net.ts"
    report = export_model(retrained, "torchscript", out)
    assert report["max_abs_diff"] < 1e-4 and out.is_file()
    x_raw, _, splits = raw_test_images
    loaded = torch.jit.load(str(out))
    model = nni_visplugin.load_model(retrained)
    with torch.no_grad():
        for n in (1, 5, 64):  # traced once, runs at any batch size
            assert (loaded(x_raw[:n]) - model(splits.test[0][:n])).abs().max().item() < 1e-4


@pytest.mark.parametrize("retrained", ["proxyless_mobile"], indirect=True)
def test_fixed_batch_size(retrained):
    import onnx

    export_model(retrained, "onnx", retrained / "fixed.onnx", batch_size=3)
    dims = onnx.load(str(retrained / "fixed.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 1, 8, 8]


@pytest.mark.parametrize("retrained", ["darts_cell"], indirect=True)
def test_a_mismatching_export_is_refused(retrained, monkeypatch):
    real_run = export_module.run_onnx
    monkeypatch.setattr(export_module, "run_onnx", lambda path, x: real_run(path, x) + 1e-3)
    with pytest.raises(ExportError, match="differs from the PyTorch model by up to 0.001"):
        export_model(retrained, "onnx", retrained / "broken.onnx")


def test_missing_inputs_are_clear(tmp_path):
    with pytest.raises(ExportError, match="model.pt is missing"):
        export_model(tmp_path, "onnx")
    with pytest.raises(ExportError, match="needs the 'no_such_module' package: pip install 'nni-visplugin\\[export\\]'"):
        export_module.require("no_such_module")


@pytest.mark.parametrize("retrained", ["darts_cell"], indirect=True)
def test_cli_export(retrained, tmp_path):
    out = subprocess.run(CLI + ["export", str(retrained), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "max abs diff vs PyTorch" in out.stdout and (tmp_path / "m.onnx").is_file()
    assert "onnx_ir" not in out.stderr  # the exporter's INFO chatter is silenced
    bad = subprocess.run(CLI + ["export", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [f"nni-visplugin: error: {tmp_path / 'nowhere' / 'model.pt'} is missing: "
                                               "export takes a retrain or search output directory"]
