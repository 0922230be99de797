"""Retrain a derived architecture from scratch and measure it on the test split, as DARTS does.

The architecture is a search's ``arch.json``; the ``result.json`` next to it names the space and
its keyword arguments. The network may be retrained wider and deeper than it was searched
(``width`` / ``cells``, for spaces that take ``width`` / ``num_cells``), always with affine batch norm.

Data: ``load_dataset(..., with_test=True)`` (``with_test=False`` with ``holdout_val``). By default
the network trains on the whole training set, the training and validation splits together (as the
paper does), and no validation accuracy is reported; the test split is read exactly once, after
the last epoch. With ``holdout_val`` it trains on the training split alone, measures the validation
accuracy after every epoch and never loads the test split (``test_accuracy`` is null): that is the
mode for comparing recipes or architectures, so that no choice can be made on the test split.

Recipe: SGD with Nesterov momentum 0.9, weight decay 3e-4, cosine schedule (optionally after a
linear warm-up), label smoothing 0.1, gradient clipping at norm 5, and augmentation on the tensors
of every batch: random crop with padding (1 pixel for 8x8 images, 2 for 28x28, 4 for 32x32) and,
except for digits, horizontal flip. On the CPU a run is reproducible under a fixed seed and thread
count: initial weights, batch order and augmentation draws all come from seeded generators.

Files written into the output directory:

- ``metrics.json``: test accuracy, parameters, FLOPs, latency, the training curve, the recipe, provenance;
- ``arch.json`` and ``result.json``: what :func:`nni_visplugin.load_model` needs to rebuild the network;
- ``model.pt``: the trained weights (a state dict; load with ``weights_only=True``).

Nothing is lost when a retraining is cut short: after every epoch the weights, the optimiser, the
schedule, the generators and the curve go to ``checkpoints/epoch-NNNN.pt`` (written atomically,
the newest two kept), and the same command on the same output directory continues from the last
complete epoch, with the same result as a run never interrupted (same seed and thread count). A
checkpoint of a different retraining (another architecture, recipe, seed or dataset) is refused
with the differences named; ``resume=False`` (``--fresh``) deletes it and starts over. The
checkpoints are removed once ``metrics.json`` is written.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from nni_visplugin.config.retrain import RetrainConfig
from nni_visplugin.data.augment import make_augment
from nni_visplugin.data.datasets import CHANNELS, load_dataset
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.fixed import build_fixed_model, count_flops, data_kwargs, fixed_kwargs
from nni_visplugin.nas.training import evaluate, train_from_scratch
from nni_visplugin.utils.checkpoints import CheckpointError, SearchCheckpoints
from nni_visplugin.utils.devices import resolve_device
from nni_visplugin.utils.errors import ConfigError
from nni_visplugin.utils.files import write_json
from nni_visplugin.stages.search import read_search
from nni_visplugin.utils.registry import DATA_KWARGS
from nni_visplugin.utils.seeding import rng_state, seed_everything, set_rng_state

__all__ = ["retrain", "retrain_kwargs", "epoch_line"]

_logger = logging.getLogger(__name__)


def _searched_channels(result: dict[str, Any]) -> int | None:
    shape = result.get("input_shape")
    if isinstance(shape, list) and len(shape) == 3:
        return shape[0]
    return (result.get("search_space_kwargs") or {}).get("in_channels")


def retrain_kwargs(result: dict[str, Any], data: dict[str, int], width: int = 0, cells: int = 0) -> dict[str, Any]:
    """Keyword arguments of the retrained network: the search's measured network, resized, fitted to ``data``."""
    searched = {k: v for k, v in (result.get("space_kwargs") or result["search_space_kwargs"]).items()
                if k not in DATA_KWARGS}
    return {**fixed_kwargs(result["space"], searched, width, cells), **data}


def _fingerprint(config: RetrainConfig, space: str, kwargs: dict[str, Any], arch: dict[str, Any],
                 num_train: int) -> dict[str, Any]:
    """What makes two retrainings the same run, as JSON values: a checkpoint continues only its own."""
    raw = {"arch": arch, "space": space, "space_kwargs": kwargs, "dataset": config.dataset, "seed": config.seed,
           "num_train_samples": num_train, **config.recipe()}
    return json.loads(json.dumps(raw, sort_keys=True))


def _resume_state(checkpoints: SearchCheckpoints, fingerprint: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The newest checkpoint in ``checkpoints`` when it belongs to this retraining; None when there is none.

    With ``resume`` False the checkpoints are deleted. One of another retraining is refused, naming
    what differs, and so is a directory of checkpoints none of which can be read.
    """
    if not checkpoints.files():
        return None
    if not resume:
        shutil.rmtree(checkpoints.directory)
        _logger.info("removed the checkpoints in %s: starting over", checkpoints.directory)
        return None
    try:
        path, state = checkpoints.load_latest()
    except CheckpointError as exc:
        raise ConfigError(f"{exc} (--fresh deletes them)") from None
    try:
        theirs = json.loads(state.get("fingerprint", ""))
    except (TypeError, ValueError):
        theirs = {}
    if theirs != fingerprint:
        differ = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
        raise ConfigError(f"{path} is a checkpoint of another retraining (it differs in {', '.join(differ)}); "
                          f"run with the same settings to continue it, or with --fresh to delete it and start over")
    return state


def epoch_line(entry: dict[str, Any], epochs: int) -> str:
    """One epoch's record as the line printed where no bar is shown (models trained side by side)."""
    return (f"epoch {entry['epoch'] + 1}/{epochs} loss {entry['train_loss']:.4f} "
            f"train accuracy {entry['train_accuracy']:.4f} ({entry['seconds']:.0f} s)")


class _Progress:
    """An iterable over ``loader`` that advances one tqdm bar per batch, across all epochs."""

    def __init__(self, loader: TensorLoader, bar: Any):
        self.loader, self.bar = loader, bar

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.bar.update(1)


@dataclass
class _Run:
    """One retraining as it is set up: what it trains, on what, where its epochs are kept."""

    config: RetrainConfig
    arch: dict[str, Any]
    result: dict[str, Any]
    arch_path: Path
    device: torch.device
    splits: Any
    kwargs: dict[str, Any]
    model: torch.nn.Module
    loader: TensorLoader
    val_loader: TensorLoader | None
    augment: Any
    num_train: int
    checkpoints: SearchCheckpoints

    @property
    def space(self) -> str:
        return self.result["space"]


def _check_channels(config: RetrainConfig, result: dict[str, Any], arch_path: Path) -> None:
    """Refused before any data is read: the stem's channels are the one thing a dataset must share."""
    searched = _searched_channels(result)
    channels = CHANNELS[config.dataset]
    if searched is not None and searched != channels:
        raise ConfigError(f"{arch_path} was searched on {searched}-channel images ({result.get('dataset', 'its dataset')}) "
                          f"but dataset {config.dataset} has {channels}-channel images")


def _set_up(config: RetrainConfig, out: Path) -> _Run:
    """Read the search, the data; build the network, the loaders and the augmentation."""
    arch, result, arch_path = read_search(config.arch)
    _check_channels(config, result, arch_path)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    splits = load_dataset(config.dataset, config.data_dir, max_train_samples=config.max_train_samples,
                          image_size=config.image_size, with_test=not config.holdout_val)
    kwargs = retrain_kwargs(result, data_kwargs(splits), config.width, config.cells)
    seed_everything(config.seed)
    try:
        model = build_fixed_model(result["space"], kwargs, arch).to(device)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{arch_path} does not fit space {result['space']!r} on {config.dataset}: {exc}") from None
    if config.holdout_val:
        x, y = splits.train
    else:
        x, y = torch.cat([splits.train[0], splits.val[0]]), torch.cat([splits.train[1], splits.val[1]])
    augment = make_augment(config.augment, config.dataset, splits.input_shape, splits.mean, splits.std, config.seed + 1,
                           config.erase)
    return _Run(config=config, arch=arch, result=result, arch_path=arch_path, device=device, splits=splits,
                kwargs=kwargs, model=model, loader=TensorLoader(x, y, config.batch_size, shuffle=True, seed=config.seed),
                val_loader=TensorLoader(*splits.val, batch_size=256) if config.holdout_val else None,
                augment=augment, num_train=len(x), checkpoints=SearchCheckpoints(out / "checkpoints"))


def _restore(run: _Run, state: dict[str, Any]) -> dict[str, Any]:
    """Put a checkpoint's weights and generators back; returns what the loop continues from."""
    run.model.load_state_dict(state["model"])
    run.loader.load_state_dict(state["loader"])
    if run.augment is not None:
        run.augment.load_state_dict(state["augment"])
    set_rng_state(state["rng"])
    done = int(state["epoch"])
    _logger.info("resuming the retraining after epoch %d of %d", done, run.config.epochs)
    return {"curve": list(state["curve"]), "done": done, "seconds": float(state["train_seconds"]),
            "wall": float(state["wall_seconds"]), "resumed_at": [*state["resumed_at"], done],
            "optimizer": {k: state[k] for k in ("epoch", "optimizer", "scheduler")}}


def _progress_bar(run: _Run, done_epochs: int):
    from tqdm import tqdm

    # Redirected to a file, the bar updates every 30 s instead of many times a second.
    interactive = getattr(sys.stderr, "isatty", lambda: False)()
    return tqdm(total=run.config.epochs * len(run.loader), desc=f"retrain {run.space}", unit="batch",
                disable=not run.config.progress, leave=False, mininterval=0.1 if interactive else 30.0,
                initial=done_epochs * len(run.loader))


def _train(run: _Run, fingerprint: dict[str, Any], started: float,
           on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """The epochs still to train, a checkpoint after each; returns the curve and the times."""
    state = _resume_state(run.checkpoints, fingerprint, run.config.resume)
    progress = _restore(run, state) if state is not None else \
        {"curve": [], "done": 0, "seconds": 0.0, "wall": 0.0, "resumed_at": [], "optimizer": None}
    curve = progress["curve"]
    bar = _progress_bar(run, progress["done"])
    train_start = time.time()

    def record(entry: dict[str, Any]) -> None:
        if run.val_loader is not None:
            entry["val_accuracy"] = evaluate(run.model, run.val_loader, run.device)
        curve.append(entry)
        bar.set_postfix(epoch=entry["epoch"], loss=f"{entry['train_loss']:.3f}", acc=f"{entry['train_accuracy']:.3f}")

    def save(epoch: int, train_state: dict[str, Any]) -> None:
        # Before the caller hears of the epoch: whatever it does then, the epoch is kept.
        run.checkpoints.save(epoch + 1, {
            "model": run.model.state_dict(), "loader": run.loader.state_dict(),
            "augment": run.augment.state_dict() if run.augment is not None else None, "rng": rng_state(),
            "curve": curve, "train_seconds": progress["seconds"] + time.time() - train_start,
            "wall_seconds": progress["wall"] + time.time() - started, "resumed_at": progress["resumed_at"],
            "fingerprint": json.dumps(fingerprint, sort_keys=True), **train_state})
        if on_epoch is not None:
            on_epoch(curve[-1])

    c = run.config
    try:
        train_from_scratch(run.model, _Progress(run.loader, bar), c.epochs, lr=c.lr, momentum=c.momentum,
                           weight_decay=c.weight_decay, label_smoothing=c.label_smoothing, grad_clip=c.grad_clip,
                           device=run.device, warmup_epochs=c.warmup_epochs, augment=run.augment, on_record=record,
                           resume=progress["optimizer"], on_checkpoint=save)
    finally:
        bar.close()
    return {"curve": curve, "train_seconds": progress["seconds"] + time.time() - train_start,
            "wall_before": progress["wall"], "resumed_at": progress["resumed_at"]}


def _measure(run: _Run) -> dict[str, Any]:
    """The one and only read of the test split, then size, FLOPs and latency of the trained network."""
    from nni_visplugin.nas.latency import measure_model

    run.model.eval()
    test = run.splits.test
    test_accuracy = None if test is None else evaluate(run.model, TensorLoader(*test, batch_size=256), run.device)
    run.model.to(memory_format=torch.contiguous_format)  # saved, measured and exported in the default layout
    return {"test_accuracy": test_accuracy, "num_params": sum(p.numel() for p in run.model.parameters()),
            "flops": count_flops(run.model, run.splits.input_shape),
            "latency_ms": measure_model(run.model, run.splits.input_shape, run.device, batch_size=1,
                                        rounds=run.config.latency_rounds)}


def _write_model(run: _Run, out: Path, measured: dict[str, Any]) -> None:
    """``model.pt``, ``arch.json`` and the ``result.json`` that :func:`nni_visplugin.load_model` reads."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(run.model.state_dict(), out / "model.pt")
    write_json(out / "arch.json", run.arch)
    s = run.splits
    write_json(out / "result.json", {
        "kind": "retrain", "space": run.space, "space_kwargs": run.kwargs,
        "search_space_kwargs": run.result.get("search_space_kwargs", run.kwargs), "input_shape": list(s.input_shape),
        "num_classes": s.num_classes, "normalization": {"mean": s.mean, "std": s.std}, "dataset": run.config.dataset,
        "test_accuracy": measured["test_accuracy"], "num_params": measured["num_params"],
        "source": str(run.arch_path)})


def _metrics(run: _Run, measured: dict[str, Any], trained: dict[str, Any], started: float) -> dict[str, Any]:
    c, s, test = run.config, run.splits, run.splits.test
    augment = run.augment.describe() if run.augment else {"crop_padding": 0, "horizontal_flip": False,
                                                          "random_erasing": 0.0}
    return {
        **measured,
        "val_accuracy": trained["curve"][-1]["val_accuracy"] if c.holdout_val else None,
        "train_split": "train" if c.holdout_val else "train+val",
        "num_train_samples": run.num_train,
        "num_test_samples": 0 if test is None else len(test[1]),
        "test_split": "not read (holdout_val)" if test is None else "read once, after the last epoch",
        "flops_note": "FLOPs of one image, 2 per multiply-add of convolutions and linear layers (torch FlopCounterMode)",
        "latency_batch_size": 1, "seed": c.seed, "epochs": c.epochs,
        "wall_seconds": trained["wall_before"] + time.time() - started, "train_seconds": trained["train_seconds"],
        "resumed_at_epochs": trained["resumed_at"], "curve": trained["curve"], "recipe": {**c.recipe(), **augment},
        "dataset": c.dataset, "input_shape": list(s.input_shape), "num_classes": s.num_classes,
        "normalization": {"mean": s.mean, "std": s.std}, "space": run.space, "space_kwargs": run.kwargs,
        "arch": run.arch, "source": str(run.arch_path), "device": str(run.device), "threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "config": asdict(c),
    }


def retrain(config: RetrainConfig, out_dir: str | os.PathLike, *,
            on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the architecture of ``config.arch`` from scratch; write the files; return ``metrics.json``.

    ``on_epoch`` receives each epoch's record (loss, accuracy, learning rate, seconds and, with
    ``holdout_val``, validation accuracy).
    """
    started = time.time()
    out = Path(out_dir)
    run = _set_up(config, out)
    _logger.info("retraining %s (%d parameters) on %d %s images for %d epochs on %s", run.space,
                 sum(p.numel() for p in run.model.parameters()), run.num_train, config.dataset, config.epochs,
                 run.device)
    trained = _train(run, _fingerprint(config, run.space, run.kwargs, run.arch, run.num_train), started, on_epoch)
    measured = _measure(run)
    _write_model(run, out, measured)
    metrics = _metrics(run, measured, trained, started)
    write_json(out / "metrics.json", metrics)
    shutil.rmtree(run.checkpoints.directory, ignore_errors=True)  # the run is complete: model.pt holds its weights
    test = "not read" if metrics["test_accuracy"] is None else f"{metrics['test_accuracy']:.4f}"
    _logger.info("retrained %s: test accuracy %s, %d parameters, %.3f ms; files in %s", run.space, test,
                 metrics["num_params"], metrics["latency_ms"], out)
    return metrics
