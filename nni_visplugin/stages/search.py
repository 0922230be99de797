"""One search, end to end: data -> space -> strategy -> derived architecture -> measured -> files.

The CLI's ``search`` command and the NNI trial both call :func:`run_search`, so what a user runs by
hand is exactly what a trial runs. Files written into the output directory:

- ``arch.json``: the derived architecture, the sample NNI's ``freeze`` takes;
- ``alphas.json``: the architecture parameters after every epoch;
- ``result.json``: metrics, settings and provenance (see :func:`run_search`);
- ``model.pt``: weights of the derived network trained from scratch on the training split.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from nni_visplugin.config.search import SearchConfig
from nni_visplugin.data.datasets import Splits, load_dataset
from nni_visplugin.data.loader import TensorLoader, bilevel_halves
from nni_visplugin.nas.fixed import build_fixed_model, data_kwargs, fixed_kwargs
from nni_visplugin.nas.training import evaluate, train_from_scratch
from nni_visplugin.utils.devices import resolve_device
from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.utils.files import write_json
from nni_visplugin.utils.registry import SPACES, STRATEGIES
from nni_visplugin.utils.seeding import seed_everything

__all__ = ["run_search", "load_model", "read_search"]

_logger = logging.getLogger(__name__)


@dataclass
class _Data:
    """The search's data: the splits, the two halves of the bilevel problem, the validation loader."""

    splits: Splits
    train_w: TensorLoader
    train_a: TensorLoader
    val: TensorLoader


def _load_data(config: SearchConfig) -> _Data:
    splits = load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction,
                          max_train_samples=config.max_train_samples, image_size=config.image_size,
                          with_test=False, download=config.download)
    config.check_in_channels(splits.input_shape[0])  # before anything is built or trained
    # Bilevel split: weights learn on one half of the training split, the architecture on the other.
    x, y = splits.train
    wi, ai = bilevel_halves(len(x), config.seed)
    return _Data(splits=splits, val=TensorLoader(*splits.val, batch_size=256),
                 train_w=TensorLoader(x[wi], y[wi], config.batch_size, shuffle=True, seed=config.seed),
                 train_a=TensorLoader(x[ai], y[ai], config.batch_size, shuffle=True, seed=config.seed + 1))


def _search(config: SearchConfig, data: _Data, search_kwargs: dict[str, Any], device: torch.device, out: Path,
            on_epoch: Callable[[int, dict[str, Any]], None] | None) -> tuple[Any, float]:
    """The bilevel search; ``alphas.json`` is rewritten after every epoch. Returns the outcome and its seconds."""
    space = SPACES.create(config.space, **search_kwargs)
    strategy = STRATEGIES.create(config.strategy, **config.strategy_kwargs)
    alphas_path = out / "alphas.json"

    def collect(epoch: int, record: dict[str, Any]) -> None:
        # Written every epoch: a search cut short still leaves its alpha history behind.
        # The strategy's history includes the epochs of an interrupted run it resumed from.
        write_json(alphas_path, [_history_entry(r) for r in strategy.history])
        if on_epoch is not None:
            on_epoch(epoch, record)

    start = time.time()
    outcome = strategy.search(space, data.train_w, data.train_a, data.val, device=device, on_epoch=collect,
                              checkpoint_dir=out / "checkpoints")
    seconds = time.time() - start
    # Again, with what the search did after its last epoch (a perturbation-based topology).
    write_json(alphas_path, [_history_entry(r) for r in strategy.history])
    write_json(out / "arch.json", outcome.arch)
    return outcome, seconds


def _measure_derived(config: SearchConfig, data: _Data, final_kwargs: dict[str, Any], arch: dict[str, Any],
                     device: torch.device, out: Path) -> tuple[torch.nn.Module, float, float]:
    """A fresh network of the derived architecture, trained from scratch on all the training split,
    measured on the validation split; saved as ``model.pt``. Returns it, its accuracy and seconds."""
    seed_everything(config.seed)
    model = build_fixed_model(config.space, final_kwargs, arch).to(device)
    start = time.time()
    x, y = data.splits.train
    train_from_scratch(model, TensorLoader(x, y, config.batch_size, shuffle=True, seed=config.seed + 2),
                       config.final_epochs, lr=config.final_lr, device=device)
    val_accuracy = evaluate(model, data.val, device)
    torch.save(model.to(memory_format=torch.contiguous_format).state_dict(), out / "model.pt")
    return model, val_accuracy, time.time() - start


def run_search(config: SearchConfig, out_dir: str | os.PathLike, *,
               on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one search and write its files into ``out_dir``; returns the contents of ``result.json``.

    ``result.json`` holds ``val_accuracy`` (the derived network trained from scratch for
    ``final_epochs`` on the training split, measured on the validation split),
    ``supernet_val_accuracy``, ``input_shape`` [C, H, W], ``num_classes``, the space with its
    search and final keyword arguments, the strategy with its settings, the full configuration,
    the seed, parameter count and wall times, how decided the alphas ended (``alpha_entropy``,
    ``decided``, ``entropy_threshold``), whether the derived architecture collapsed (``learnable_ops``
    of ``kept_ops``, ``collapsed``) and ``warning``, set when the search ended undecided or collapsed.
    """
    started = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    data = _load_data(config)
    search_kwargs = {**config.space_kwargs, **data_kwargs(data.splits)}
    outcome, search_seconds = _search(config, data, search_kwargs, device, out, on_epoch)
    final_kwargs = fixed_kwargs(config.space, search_kwargs, config.final_width, config.final_cells, strict=False)
    model, val_accuracy, final_seconds = _measure_derived(config, data, final_kwargs, outcome.arch, device, out)
    s = data.splits
    result = {
        "val_accuracy": val_accuracy, "supernet_val_accuracy": outcome.last_val_accuracy,
        "input_shape": list(s.input_shape), "num_classes": s.num_classes,
        "normalization": {"mean": s.mean, "std": s.std}, "space": config.space, "space_kwargs": final_kwargs,
        "search_space_kwargs": search_kwargs, "strategy": config.strategy,
        "strategy_kwargs": dict(config.strategy_kwargs),
        "hyperparameters": {**dict(config.strategy_kwargs), **{f"space.{k}": v for k, v in config.space_kwargs.items()}},
        "config": config.to_dict(), "dataset": config.dataset, "seed": config.seed,
        "num_params": sum(p.numel() for p in model.parameters()), "search_seconds": search_seconds,
        "final_train_seconds": final_seconds, "wall_seconds": time.time() - started, "device": str(device),
        "torch_version": torch.__version__, **_latency_report(outcome, config.space, search_kwargs, s, device),
        **outcome.decision,
    }
    write_json(out / "result.json", result)
    _logger.info("derived architecture: val_accuracy %.4f with %d parameters; files in %s",
                 val_accuracy, result["num_params"], out)
    return result


def _latency_report(outcome: Any, space: str, search_kwargs: dict[str, Any], splits: Splits,
                    device: torch.device) -> dict[str, Any]:
    """Predicted (lookup table) and measured latency of the derived network, on this device.

    Both concern the network at its searched size, the one the table describes.
    """
    table = getattr(outcome, "latency_table", None)  # strategies of other packages may not set it
    if table is None:
        return {}
    from nni_visplugin.nas.latency import measure_model

    predicted = table.predict(outcome.arch)
    batch = table.meta["batch_size"]
    measured = measure_model(build_fixed_model(space, search_kwargs, outcome.arch), splits.input_shape, device, batch,
                             rounds=3)
    _logger.info("latency of the derived network: predicted %.3f ms, measured %.3f ms (batch %d, %s)",
                 predicted, measured, batch, table.meta["device_name"])
    return {"latency_predicted_ms": predicted, "latency_measured_ms": measured,
            "latency_error": abs(predicted - measured) / measured, "latency_batch_size": batch,
            "latency_device": table.meta["device_name"]}


def _history_entry(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("epoch", "train_loss", "val_accuracy", "weight_lr", "seconds", "alphas", "arch",
                                   "alpha_entropy", "normal_skips", "early_stop",
                                   "latency_expected_ms", "latency_predicted_ms", "perturbation") if k in record}


def read_search(arch: str | os.PathLike, *, hint: str = "--arch takes the arch.json of a search output directory",
                ) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The architecture and the ``result.json`` beside it; ``arch`` is the file or its directory.

    Returns both and the architecture file's path. Raises :class:`ConfigError` naming the file when
    either is missing, corrupt or incomplete; ``hint``, the end of the message for a missing file,
    says what the caller's argument takes.
    """
    path = Path(arch).expanduser()
    if path.is_dir():
        path = path / "arch.json"
    result_path = path.parent / "result.json"
    loaded = []
    for p, what in ((path, "architecture"), (result_path, "search result")):
        try:
            loaded.append(json.loads(p.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{what} file {p} is missing; {hint}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{what} file {p} is unreadable or corrupt: {exc}") from None
    arch_dict, result = loaded
    if not isinstance(arch_dict, dict):
        raise ConfigError(f"{path} must hold a JSON object of label -> choice, not {type(arch_dict).__name__}")
    if not isinstance(result, dict) or not isinstance(result.get("space"), str) \
            or not isinstance(result.get("space_kwargs", result.get("search_space_kwargs")), dict):
        raise ConfigError(f"{result_path} names no space and space_kwargs: it is not a search's result.json")
    return arch_dict, result, path


def load_model(directory: str | os.PathLike, *, weights: bool = True) -> torch.nn.Module:
    """Rebuild the fixed network from a search or retraining directory (``result.json`` + ``arch.json``).

    The architecture is validated against its space first; the trained weights in ``model.pt``
    are loaded with ``weights_only=True`` when present and ``weights`` is true. A missing or
    corrupt file raises :class:`ConfigError` naming it.
    """
    arch, result, path = read_search(directory, hint="load_model takes a search or retraining output directory")
    model = build_fixed_model(result["space"], result["space_kwargs"], arch)
    weights_file = path.parent / "model.pt"
    if weights and weights_file.exists():
        model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    return model.eval()
