"""The settings of ``nni-visplugin pipeline``: an NNI experiment and what to do with its best search."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nni_visplugin.utils.errors import ConfigError

__all__ = ["PipelineConfig", "RETRAIN_KEYS"]


RETRAIN_KEYS = ("dataset", "data_dir", "epochs", "width", "cells", "batch_size", "lr", "label_smoothing",
                "warmup_epochs", "augment", "erase", "threads", "device", "max_train_samples", "seeds", "jobs")


@dataclass(frozen=True)
class PipelineConfig:
    experiment: dict[str, Any]
    out: Path
    port: int = 8080
    retrain: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    jobs: int = 1  # seeds retrained at once, each in a process of its own
    export: tuple[str, ...] = ("onnx",)
    baselines: Path | None = None
    source: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, out: str | None = None, port: int | None = None,
             seeds: list[int] | None = None, jobs: int | None = None, threads: int | None = None) -> "PipelineConfig":
        """Read ``path``; ``seeds``, ``jobs`` and ``threads`` (the command line's) replace the config's.

        ``jobs`` > 1 without ``threads`` gives each seed's process one thread, whatever the config says.
        """
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: malformed YAML: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("experiment"), dict):
            raise ConfigError(f"{path}: needs an 'experiment' mapping (an NNI experiment config) and a 'pipeline' mapping")
        unknown = sorted(set(doc) - {"experiment", "pipeline"})
        if unknown:
            raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; use experiment and pipeline")
        p = doc.get("pipeline") or {}
        known = {"out", "port", "retrain", "export", "baselines"}
        if set(p) - known:
            raise ConfigError(f"{path}: unknown pipeline key(s) {', '.join(sorted(set(p) - known))}; "
                              f"known: {', '.join(sorted(known))}")
        retrain, seeds, jobs = _retrain_part(path, p, seeds, jobs, threads)
        export = p.get("export", ["onnx"])
        export = [export] if isinstance(export, str) else list(export or [])
        if any(f not in ("onnx", "torchscript") for f in export):
            raise ConfigError(f"{path}: pipeline.export takes onnx and/or torchscript, got {export}")
        port = port if port is not None else p.get("port", 8080)
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{path}: pipeline.port must be a TCP port, got {port!r}")
        _check_retrain(path, retrain)
        _check_export_packages(path, export)
        base = path.resolve().parent
        baselines = p.get("baselines")
        return cls(experiment=doc["experiment"], out=Path(out or p.get("out") or f"runs/{path.stem}").resolve(),
                   port=port, retrain=retrain, seeds=tuple(seeds), jobs=jobs, export=tuple(export),
                   baselines=(base / baselines) if baselines else None, source=path.resolve())


def _check_retrain(path: Path, retrain: dict[str, Any]) -> None:
    """The retraining's settings, checked now rather than after the hour of searching."""
    from nni_visplugin.config.retrain import RetrainConfig

    try:
        RetrainConfig(arch="", **retrain)
    except ConfigError as exc:
        raise ConfigError(f"{path}: pipeline.retrain.{exc}") from None


# The packages each export format needs beyond the core install, and the extra that brings them.
EXPORT_PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": ()}


def _check_export_packages(path: Path, export: list[str]) -> None:
    """Refuse, before any work, an export whose packages are not installed (they come in an extra)."""
    import importlib.util

    for fmt in export:
        missing = [m for m in EXPORT_PACKAGES.get(fmt, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"{path}: pipeline.export {fmt} needs {', '.join(missing)}, which are not installed: "
                              f"pip install 'nni-visplugin[export]', or leave {fmt} out of pipeline.export")


def _retrain_part(path: Path, p: dict[str, Any], seeds: list[int] | None, jobs: int | None,
                  threads: int | None) -> tuple[dict[str, Any], list[int], int]:
    """``pipeline.retrain`` with the command line's ``seeds``, ``jobs`` and ``threads`` put in: the
    retraining settings, the seeds, and how many seeds train at once."""
    retrain = dict(p.get("retrain") or {})
    bad = sorted(set(retrain) - set(RETRAIN_KEYS))
    if bad:
        raise ConfigError(f"{path}: unknown pipeline.retrain key(s) {', '.join(bad)}; known: {', '.join(RETRAIN_KEYS)}")
    if seeds is not None:
        retrain["seeds"] = list(seeds)
    if jobs is not None:
        retrain["jobs"] = jobs
        if jobs > 1 and threads is None:
            retrain["threads"] = 1
    if threads is not None:
        retrain["threads"] = threads
    if "threads" in retrain and (isinstance(retrain["threads"], bool) or not isinstance(retrain["threads"], int)
                                 or retrain["threads"] < 0):
        raise ConfigError(f"{path}: pipeline.retrain.threads must be an integer >= 0 (0: PyTorch's default), "
                          f"got {retrain['threads']!r}")
    seeds = retrain.pop("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{path}: pipeline.retrain.seeds must be a non-empty list of integers >= 0")
    jobs = retrain.pop("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"{path}: pipeline.retrain.jobs must be an integer >= 1, got {jobs!r}")
    if jobs > 1:
        retrain.setdefault("threads", 1)
    return retrain, seeds, jobs
