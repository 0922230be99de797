"""Export a trained network to ONNX or TorchScript, with its input normalisation built in.

The exported graph takes float32 images ``[N, C, H, W]`` with values in [0, 1] (pixel values
divided by their maximum: 255 for Fashion-MNIST, CIFAR-10 and image folders, 16 for digits;
RGB channel order for 3-channel data) and returns logits ``[N, num_classes]``. The per-channel
``(x - mean) / std`` the network was trained with is the graph's first operation, so a
deployment needs no statistics of the training data. A ``<file>.json`` beside the export says
the same in data: input and output names, shape, scaling, mean and std, and the verification.

After writing, the file is loaded back (onnxruntime, ``torch.jit.load``) and run against the
PyTorch model on a batch of random images; an export whose outputs differ by more than
``tolerance`` (1e-4, absolute) is refused.

ONNX export uses PyTorch's ``torch.export``-based exporter, which needs the ``onnxscript`` package:
``pip install 'nni-visplugin[export]'``.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from nni_visplugin.stages.search import load_model
from nni_visplugin.utils.errors import EXIT_FAILED, UserError
from nni_visplugin.utils.files import write_json

__all__ = ["export_model", "Normalized", "ExportError", "FORMATS"]

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"
SCALING = {"digits": "pixel values / 16 (scikit-learn's digits range 0..16)",
           "fashion-mnist": "pixel values / 255", "cifar10": "pixel values / 255, RGB",
           "imagefolder": "RGB, resized to the input size, pixel values / 255"}


class ExportError(UserError, RuntimeError):
    """An export failed or does not reproduce the PyTorch model."""

    exit_code = EXIT_FAILED  # the export stage failed: no verified file came out


class Normalized(nn.Module):
    """``model((x - mean) / std)``: takes images in [0, 1], as the exported graph does."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ExportError(f"ONNX export needs the {module!r} package: pip install 'nni-visplugin[export]'")


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> dict[str, Any]:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module)
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    # The exporter's optimiser logs every pass at INFO; only its warnings concern the user.
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # the exporter raises many types; the message is what matters
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    import onnx

    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset}


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():
        # TorchScript is deprecated in recent PyTorch, yet still what many C++ and mobile runtimes load.
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=UserWarning)
        try:
            traced = torch.jit.trace(model, example)
            torch.jit.save(traced, str(path))
        except Exception as exc:
            raise ExportError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from exc
    return {}


def run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(x)


def _load(d: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of directory ``d`` with its normalisation built in, and its ``result.json``."""
    if not (d / "model.pt").is_file():
        raise ExportError(f"{d / 'model.pt'} is missing: export takes a retrain or search output directory")
    try:
        result = json.loads((d / "result.json").read_text())
        mean, std = result["normalization"]["mean"], result["normalization"]["std"]
        tuple(result["input_shape"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ExportError(f"{d / 'result.json'} lacks the input shape or normalisation ({exc})") from None
    try:
        return Normalized(load_model(d), mean, std).eval(), result
    except (UserError, KeyError, ValueError, RuntimeError) as exc:
        raise ExportError(f"cannot rebuild the model of {d}: {exc}") from None


def _verify(model: nn.Module, path: Path, run, batches: list[torch.Tensor], tolerance: float) -> float:
    """The largest difference between the exported file and PyTorch over ``batches``."""
    diffs = []
    for x in batches:
        with torch.no_grad():
            expected = model(x)
        got = run(path, x)
        if got.shape != expected.shape:
            raise ExportError(f"{path} returns shape {tuple(got.shape)} for a batch of {len(x)}, "
                              f"PyTorch {tuple(expected.shape)}")
        diffs.append((got - expected).abs().max().item())
    max_diff = max(diffs)
    if not max_diff <= tolerance:  # also catches NaN
        raise ExportError(f"{path} differs from the PyTorch model by up to {max_diff:.3g} (tolerance {tolerance:g})")
    return max_diff


def _report(fmt: str, path: Path, d: Path, result: dict[str, Any], batch_size: int, sizes: list[int],
            max_diff: float, tolerance: float, extra: dict[str, Any]) -> dict[str, Any]:
    """What ``<file>.json`` says of the export: inputs, outputs, the check against PyTorch."""
    dataset, shape = result.get("dataset"), tuple(result["input_shape"])
    mean, std = result["normalization"]["mean"], result["normalization"]["std"]
    batch_dim: int | str = batch_size or "batch"
    return {
        "format": fmt, "file": str(path),
        "input": {
            "name": INPUT_NAME, "shape": [batch_dim, *shape], "dtype": "float32",
            "description": f"float32 [{batch_dim}, {', '.join(map(str, shape))}] images in [0, 1] "
                           f"({SCALING.get(dataset, 'pixel values / their maximum')}); "
                           "the (x - mean) / std normalisation is built into the graph",
            "normalization_built_in": True, "mean": mean, "std": std,
        },
        "output": {"name": OUTPUT_NAME, "shape": [batch_dim, result.get("num_classes")], "meaning": "logits"},
        "dataset": dataset, "space": result.get("space"), "source": str(d), "max_abs_diff": max_diff,
        "tolerance": tolerance, "verified_batch_sizes": sizes, "torch_version": torch.__version__, **extra,
    }


def export_model(directory: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None, *,
                 batch_size: int = 0, tolerance: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Export the trained model of ``directory`` (retrain or search output) and verify it.

    ``batch_size`` 0 exports a graph for any batch size (checked at 1 and 8); a positive value
    fixes it. Returns the report also written to ``<file>.json``; raises :class:`ExportError` when
    the export fails or differs from PyTorch by more than ``tolerance``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if batch_size < 0:
        raise ExportError(f"batch size must be >= 0, got {batch_size}")
    d = Path(directory).expanduser()
    model, result = _load(d)
    path = Path(out).expanduser() if out else d / f"model{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    sizes = [batch_size] if batch_size else [1, 8]
    batches = [torch.rand(n, *result["input_shape"], generator=gen) for n in sizes]
    example = batches[-1] if not batch_size else batches[0]
    if fmt == "onnx":
        extra, run = _export_onnx(model, example, path, dynamic=not batch_size), run_onnx
    else:
        extra, run = _export_torchscript(model, example, path), run_torchscript
    max_diff = _verify(model, path, run, batches, tolerance)
    report = _report(fmt, path, d, result, batch_size, sizes, max_diff, tolerance, extra)
    write_json(path.with_name(path.name + ".json"), report)
    return report
