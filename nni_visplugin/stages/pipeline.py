"""The whole pipeline in one command: search, pick, retrain, test, export, report.

``nni-visplugin pipeline --config experiments/fashion_mnist.yml`` reads a YAML file with two parts:
``experiment``, an NNI experiment config as ``nnictl create`` takes it (Optuna-tuned searches, one
per trial), and ``pipeline``, what to do with its best search:

.. code-block:: yaml

    pipeline:
      out: runs/fashion_mnist      # everything goes here (relative to the current directory)
      port: 8080                   # NNI's web UI while the searches run
      retrain: {dataset: fashion-mnist, epochs: 30, width: 16, cells: 8, seeds: [0, 1, 2], jobs: 3}
      export: [onnx]
    experiment:
      trialCommand: python -m nni_visplugin.trial ...
      ...

Stages leave their files as they finish, and a stage whose files are there is not run again, so a
pipeline cut short resumes where it stopped when started again with the same ``out``. The best
search is picked by the validation accuracy of its derived network; the test split is read only by
the retraining, once, at its end. ``retrain`` takes the keys of ``nni-visplugin retrain`` (see
``RETRAIN_KEYS``), the list of ``seeds``, and ``jobs``: how many seeds train at once, each in a
process of its own with ``threads`` threads (1 unless given).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from nni_visplugin.config.pipeline import PipelineConfig
from nni_visplugin.config.retrain import RetrainConfig
from nni_visplugin.hpo.experiment import ExperimentError, collect_trials, run_experiment
from nni_visplugin.nas.latency import measure_model
from nni_visplugin.stages.export import export_model
from nni_visplugin.stages.report import PUBLISHED_FASHION_MNIST, write_report
from nni_visplugin.stages.retrain import epoch_line, retrain
from nni_visplugin.stages.search import load_model, read_search
from nni_visplugin.utils.files import write_json

__all__ = ["PipelineConfig", "run_pipeline"]

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- stage 2: retraining
def _retrain_one(arch: str, seed: int, recipe: dict[str, Any], run_dir: str, parallel: bool) -> dict[str, Any]:
    """One seed's retraining; in a worker process when ``parallel`` (one line per epoch, no bar)."""

    config = RetrainConfig(arch=arch, seed=seed, **recipe, **({"progress": False} if parallel else {}))

    def on_epoch(entry: dict[str, Any]) -> None:
        print(f"retrain seed {seed}: {epoch_line(entry, config.epochs)}", flush=True)

    return retrain(config, run_dir, on_epoch=on_epoch if parallel else None)


def _remeasure_latency(runs: dict[Path, dict[str, Any]]) -> None:
    """Measure again, one model at a time, the latency of seeds that trained side by side (each
    measured its own while the others were still training); correct their metrics, in ``runs``
    (run directory -> metrics) and in ``metrics.json``."""
    import torch


    threads = torch.get_num_threads()
    try:
        for run_dir, metrics in runs.items():
            torch.set_num_threads(metrics["threads"])
            before = metrics["latency_ms"]
            metrics["latency_ms"] = measure_model(load_model(run_dir), metrics["input_shape"], metrics["device"],
                                                  batch_size=1, rounds=metrics["config"]["latency_rounds"])
            metrics["latency_note"] = (f"measured after the seeds that trained side by side had finished, "
                                       f"one model at a time ({before:.3f} ms while they were training)")
            write_json(run_dir / "metrics.json", metrics)
    finally:
        torch.set_num_threads(threads)


def _seed_done(root: Path, seed: int) -> bool:
    """Whether seed ``seed`` was retrained into ``root`` before (its metrics are written last)."""
    return (root / f"seed{seed}" / "metrics.json").exists()


def retrain_seeds(cfg: PipelineConfig, arch: Path, root: Path) -> list[dict[str, Any]]:
    """Retrain ``arch`` once per seed into ``root/seed{S}``; seeds retrained before are read back.

    With ``cfg.jobs`` > 1 that many seeds train at once, each in a fresh process with
    ``retrain.threads`` threads (1 unless set): on a small CPU, single-threaded processes side by
    side get more work done than one process using every core. A seed that fails does not stop
    the others; its error is raised once all have ended, and the finished seeds keep their files.
    The stage's wall time, summed over the calls that retrained something, goes to
    ``root/stage.json``: seeds side by side overlap, so their own wall times do not add up to it.
    """
    started = time.time()
    done: dict[int, dict[str, Any]] = {}
    todo = []
    for seed in cfg.seeds:
        run_dir = root / f"seed{seed}"
        if _seed_done(root, seed):
            done[seed] = json.loads((run_dir / "metrics.json").read_text())
            print(f"retrain seed {seed}: done before, test accuracy {done[seed]['test_accuracy']:.4f}", flush=True)
        else:
            todo.append(seed)

    def finished(seed: int, metrics: dict[str, Any]) -> None:
        done[seed] = metrics
        print(f"retrain seed {seed}: test accuracy {metrics['test_accuracy']:.4f} "
              f"({metrics['train_seconds']:.0f} s)", flush=True)

    if todo:
        print(f"retrain seeds {', '.join(map(str, todo))} ({min(cfg.jobs, len(todo))} at a time): {cfg.retrain}",
              flush=True)
    if cfg.jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        errors = []
        # spawn: a forked child would inherit this process's OpenMP thread pool in an unknown state
        with ProcessPoolExecutor(max_workers=min(cfg.jobs, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {seed: pool.submit(_retrain_one, str(arch), seed, cfg.retrain, str(root / f"seed{seed}"), True)
                       for seed in todo}
            for seed, future in futures.items():
                try:
                    finished(seed, future.result())
                except Exception as exc:  # reported after the other seeds have finished
                    print(f"retrain seed {seed}: failed: {exc}", flush=True)
                    errors.append(exc)
        _remeasure_latency({root / f"seed{seed}": done[seed] for seed in todo if seed in done})
        if errors:
            raise errors[0]
    else:
        for seed in todo:
            finished(seed, _retrain_one(str(arch), seed, cfg.retrain, str(root / f"seed{seed}"), False))
    if todo:

        stage_file = root / "stage.json"
        before = json.loads(stage_file.read_text())["wall_seconds"] if stage_file.exists() else 0.0
        write_json(stage_file, {"wall_seconds": round(before + time.time() - started, 1), "jobs": cfg.jobs})
    return [{**done[seed], "dir": str(root / f"seed{seed}")} for seed in cfg.seeds]


# ---------------------------------------------------------------------- the whole thing
def _search_stage(cfg: PipelineConfig) -> dict[str, Any]:
    """The NNI experiment and its pick (by validation accuracy only: the test split stays unseen),
    or what an earlier call found (``search.json``)."""
    search_file = cfg.out / "search.json"
    if search_file.exists():
        search = json.loads(search_file.read_text())
        print(f"search: done before ({search['experiment_id']}), reusing {search_file}", flush=True)
        return search
    search = run_experiment(cfg)
    trials = collect_trials(Path(search["experiment_dir"]))
    if not trials:
        raise ExperimentError(f"no trial of experiment {search['experiment_id']} finished with a result; "
                              f"see nnictl log stderr {search['experiment_id']}")
    search.update({"trials": trials, "best": max(trials, key=lambda t: t["val_accuracy"])})
    write_json(search_file, search)
    return search


def _export_stage(cfg: PipelineConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    exports = {}
    for fmt in cfg.export:
        exports[fmt] = export_model(runs[0]["dir"], fmt)
        print(f"export {fmt}: {exports[fmt].get('file', '')} (max abs difference to PyTorch "
              f"{exports[fmt].get('max_abs_diff')})", flush=True)
    return exports


def _comparison(cfg: PipelineConfig, runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float, float]:
    """The report's table: this pipeline's mean over seeds, the baselines, the published results."""
    accs = [r["test_accuracy"] for r in runs]
    mean = statistics.mean(accs)
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    rows = [{"model": "this pipeline (search + retrain)", "test_accuracy": mean, "params": runs[0]["num_params"],
             "note": f"mean of seeds {', '.join(map(str, cfg.seeds))} (std {spread:.4f}): "
                     + ", ".join(f"{a:.4f}" for a in accs)}]
    if cfg.baselines and cfg.baselines.exists():
        rows += json.loads(cfg.baselines.read_text())
    if cfg.retrain.get("dataset") == "fashion-mnist":
        rows += PUBLISHED_FASHION_MNIST
    return rows, mean, spread


def _summary(cfg: PipelineConfig, search: dict[str, Any], runs: list[dict[str, Any]], mean: float, spread: float,
             started: float) -> dict[str, Any]:
    stage_file = cfg.out / "retrain" / "stage.json"
    stage = json.loads(stage_file.read_text()) if stage_file.exists() else {"wall_seconds": 0.0}
    best = search["best"]
    return {
        "config": str(cfg.source), "experiment": search["experiment_id"], "searches": len(search["trials"]),
        "picked trial": best["trial"], "picked val accuracy": best["val_accuracy"],
        "test accuracy (mean over seeds)": mean, "test accuracy std": spread, "seeds": list(cfg.seeds),
        "parameters": runs[0]["num_params"], "FLOPs per image": runs[0].get("flops"),
        "latency (ms, batch 1)": runs[0].get("latency_ms"),
        "search wall time (s)": search.get("search_wall_seconds"),
        "retrain wall time (s)": stage["wall_seconds"] or round(sum(r.get("wall_seconds", 0) for r in runs), 1),
        "retrain seeds at once": cfg.jobs,
        "pipeline wall time this run (s)": round(time.time() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }


def _calls(cfg: PipelineConfig, started: float, searched: bool, fresh_seeds: list[int]) -> list[dict[str, Any]]:
    """Every call of the command on this output directory, with what it did: a pipeline resumed or
    extended (more seeds) keeps the wall time of the call that searched and retrained."""
    previous = cfg.out / "pipeline.json"
    calls = json.loads(previous.read_text()).get("calls", []) if previous.exists() else []
    calls.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)), "searched": searched,
                  "retrained seeds": fresh_seeds, "seeds": list(cfg.seeds), "jobs": cfg.jobs,
                  "threads": cfg.retrain.get("threads", 0), "wall_seconds": round(time.time() - started, 1)})
    return calls


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Search, pick, retrain per seed, export, report; stages whose files are there are not redone."""
    started = time.time()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    searched = not (out / "search.json").exists()
    fresh_seeds = [s for s in cfg.seeds if not _seed_done(out / "retrain", s)]
    search = _search_stage(cfg)
    best = search["best"]
    print(f"picked: trial {best['trial']} (val accuracy {best['val_accuracy']:.4f}, {best['num_params']} parameters "
          f"as its search scored it)", flush=True)
    runs = retrain_seeds(cfg, Path(best["dir"]) / "arch.json", out / "retrain")
    exports = _export_stage(cfg, runs)
    comparison, mean, spread = _comparison(cfg, runs)
    summary = _summary(cfg, search, runs, mean, spread, started)
    history = json.loads((Path(best["dir"]) / "alphas.json").read_text())
    picked = json.loads((Path(best["dir"]) / "result.json").read_text())
    if "decided" in picked:
        summary["alphas decided"] = (f"{'yes' if picked['decided'] else 'NO'} (entropy {picked['alpha_entropy']:.3f}, "
                                     f"decided below {picked['entropy_threshold']})")
    if "collapsed" in picked:
        summary["operations with weights kept"] = f"{picked['learnable_ops']} of {picked['kept_ops']}"
    if picked.get("warning"):
        print(f"warning: the picked search ended {picked['warning']}", flush=True)
    arch, _, _ = read_search(best["dir"], hint="search.json's best trial must be a search output directory")
    report = write_report(out, title=f"nni-visplugin pipeline: {cfg.source.name if cfg.source else out.name}",
                          summary=summary, trials=search["trials"], history=history, arch=arch, runs=runs,
                          comparison=comparison, warning=picked.get("warning"))
    result = {"summary": summary, "runs": runs, "exports": exports, "comparison": comparison, "report": str(report),
              "calls": _calls(cfg, started, searched, fresh_seeds)}
    write_json(out / "pipeline.json", result)
    print(f"report: {report}", flush=True)
    return result
