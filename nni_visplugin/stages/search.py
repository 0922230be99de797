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
from pathlib import Path
from typing import Any, Callable

import torch

from nni_visplugin.config.search import SearchConfig
from nni_visplugin.data.datasets import Splits, load_dataset
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.fixed import build_fixed_model, data_kwargs
from nni_visplugin.nas.training import evaluate, train_from_scratch
from nni_visplugin.utils.devices import resolve_device
from nni_visplugin.utils.files import write_json
from nni_visplugin.utils.registry import SPACES, STRATEGIES, factory_parameters
from nni_visplugin.utils.seeding import seed_everything

__all__ = ["run_search", "load_model"]

_logger = logging.getLogger(__name__)


def _final_kwargs(config: SearchConfig, search_kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(search_kwargs)
    accepted = factory_parameters(SPACES.get(config.space))
    if "affine" in accepted:
        kwargs["affine"] = True  # fixed networks learn their batch-norm scale and shift
    if config.final_width and "width" in accepted:
        kwargs["width"] = config.final_width
    if config.final_cells and "num_cells" in accepted:
        kwargs["num_cells"] = config.final_cells
    return kwargs


def run_search(config: SearchConfig, out_dir: str | os.PathLike, *,
               on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one search and write its files into ``out_dir``; returns the contents of ``result.json``.

    ``result.json`` holds ``val_accuracy`` (the derived network trained from scratch for
    ``final_epochs`` on the training split, measured on the validation split),
    ``supernet_val_accuracy``, ``input_shape`` [C, H, W], ``num_classes``, the space with its
    search and final keyword arguments, the strategy with its settings, the full configuration,
    the seed, parameter count and wall times.
    """
    started = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    seed_everything(config.seed)

    splits = load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction,
                          max_train_samples=config.max_train_samples, image_size=config.image_size,
                          with_test=False, download=config.download)
    config.check_in_channels(splits.input_shape[0])  # before anything is built or trained
    search_kwargs = {**config.space_kwargs, **data_kwargs(splits)}
    space = SPACES.create(config.space, **search_kwargs)
    strategy = STRATEGIES.create(config.strategy, **config.strategy_kwargs)

    # Bilevel split: weights learn on one half of the training split, the architecture on the other.
    x, y = splits.train
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed))
    half = len(x) // 2
    wi, ai = perm[:half], perm[half:]
    train_w = TensorLoader(x[wi], y[wi], config.batch_size, shuffle=True, seed=config.seed)
    train_a = TensorLoader(x[ai], y[ai], config.batch_size, shuffle=True, seed=config.seed + 1)
    val = TensorLoader(*splits.val, batch_size=256)

    alphas_path = out / "alphas.json"

    def collect(epoch: int, record: dict[str, Any]) -> None:
        # Written every epoch: a search cut short still leaves its alpha history behind.
        # The strategy's history includes the epochs of an interrupted run it resumed from.
        write_json(alphas_path, [_history_entry(r) for r in strategy.history])
        if on_epoch is not None:
            on_epoch(epoch, record)

    search_start = time.time()
    outcome = strategy.search(space, train_w, train_a, val, device=device, on_epoch=collect,
                              checkpoint_dir=out / "checkpoints")
    search_seconds = time.time() - search_start
    # Again, with what the search did after its last epoch (a perturbation-based topology).
    write_json(alphas_path, [_history_entry(r) for r in strategy.history])
    write_json(out / "arch.json", outcome.arch)

    # Measure the derived architecture: a fresh network, trained from scratch on all training data.
    final_kwargs = _final_kwargs(config, search_kwargs)
    seed_everything(config.seed)
    model = build_fixed_model(config.space, final_kwargs, outcome.arch).to(device)
    final_start = time.time()
    train_from_scratch(model, TensorLoader(x, y, config.batch_size, shuffle=True, seed=config.seed + 2),
                       config.final_epochs, lr=config.final_lr, device=device)
    val_accuracy = evaluate(model, val, device)
    torch.save(model.to(memory_format=torch.contiguous_format).state_dict(), out / "model.pt")
    latency = _latency_report(outcome, config.space, search_kwargs, splits, device)

    result = {
        "val_accuracy": val_accuracy,
        "supernet_val_accuracy": outcome.last_val_accuracy,
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "normalization": {"mean": splits.mean, "std": splits.std},
        "space": config.space,
        "space_kwargs": final_kwargs,
        "search_space_kwargs": search_kwargs,
        "strategy": config.strategy,
        "strategy_kwargs": dict(config.strategy_kwargs),
        "hyperparameters": {**dict(config.strategy_kwargs), **{f"space.{k}": v for k, v in config.space_kwargs.items()}},
        "config": config.to_dict(),
        "dataset": config.dataset,
        "seed": config.seed,
        "num_params": sum(p.numel() for p in model.parameters()),
        "search_seconds": search_seconds,
        "final_train_seconds": time.time() - final_start,
        "wall_seconds": time.time() - started,
        "device": str(device),
        "torch_version": torch.__version__,
        **latency,
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


def load_model(directory: str | os.PathLike, *, weights: bool = True) -> torch.nn.Module:
    """Rebuild the fixed network from a search directory (``result.json`` + ``arch.json``).

    The architecture is validated against its space first; the trained weights in ``model.pt``
    are loaded with ``weights_only=True`` when present and ``weights`` is true.
    """
    d = Path(directory)
    try:
        result = json.loads((d / "result.json").read_text())
        arch = json.loads((d / "arch.json").read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc.filename} is missing: {d} is not a search output directory") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt JSON in {d}: {exc}") from None
    model = build_fixed_model(result["space"], result["space_kwargs"], arch)
    if weights and (d / "model.pt").exists():
        model.load_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()
