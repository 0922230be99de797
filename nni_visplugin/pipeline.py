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
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nni_visplugin.config import ConfigError

__all__ = ["PipelineConfig", "run_pipeline"]

_logger = logging.getLogger("nni_visplugin.pipeline")

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
        export = p.get("export", ["onnx"])
        export = [export] if isinstance(export, str) else list(export or [])
        if any(f not in ("onnx", "torchscript") for f in export):
            raise ConfigError(f"{path}: pipeline.export takes onnx and/or torchscript, got {export}")
        port = port if port is not None else p.get("port", 8080)
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{path}: pipeline.port must be a TCP port, got {port!r}")
        base = path.resolve().parent
        baselines = p.get("baselines")
        return cls(experiment=doc["experiment"], out=Path(out or p.get("out") or f"runs/{path.stem}").resolve(),
                   port=port, retrain=retrain, seeds=tuple(seeds), jobs=jobs, export=tuple(export),
                   baselines=(base / baselines) if baselines else None, source=path.resolve())


# ---------------------------------------------------------------------- stage 1: the NNI experiment
def _nni_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The experiment with paths made absolute (NNI resolves them against the config file, which
    the pipeline writes elsewhere) and its working directory inside ``out``."""
    exp = json.loads(json.dumps(cfg.experiment))
    base = cfg.source.parent if cfg.source else Path.cwd()
    for key in ("trialCodeDirectory",):
        if key in exp:
            exp[key] = str((base / exp[key]).resolve())
    for section in ("tuner", "assessor"):
        if isinstance(exp.get(section), dict) and "codeDirectory" in exp[section]:
            exp[section]["codeDirectory"] = str((base / exp[section]["codeDirectory"]).resolve())
    exp.setdefault("experimentWorkingDirectory", str(cfg.out / "nni"))
    return exp


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/{path}", timeout=10) as r:
        return json.loads(r.read())


def _nnictl() -> str:
    found = Path(sys.executable).with_name("nnictl")
    return str(found) if found.exists() else (shutil.which("nnictl") or "nnictl")


def run_experiment(cfg: PipelineConfig) -> dict[str, Any]:
    """``nnictl create``, follow it to the end (printing progress), ``nnictl stop``."""
    from nni_visplugin.check import check_experiment

    cfg.out.mkdir(parents=True, exist_ok=True)
    exp_path = cfg.out / "experiment.yml"
    nni_config = _nni_config(cfg)
    exp_path.write_text(yaml.safe_dump(nni_config, sort_keys=False))
    problems = check_experiment(exp_path)
    if problems:
        raise ConfigError("the experiment does not pass nni-visplugin check:\n  " + "\n  ".join(problems))
    started = time.time()
    # The trials' `python` must be this interpreter (the one with nni_visplugin installed), also
    # when its environment was not activated.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    created = subprocess.run([_nnictl(), "create", "--config", str(exp_path), "--port", str(cfg.port)],
                             capture_output=True, text=True, timeout=300, env=env)
    output = created.stdout + created.stderr
    match = re.search(r"nnictl stop (\w+)", output) or re.search(r"Experiment ID: ?\S*?(\w{8})", output)
    if created.returncode != 0 or not match:
        raise RuntimeError(f"nnictl create failed:\n{output[-3000:]}")
    exp_id = match.group(1)
    print(f"search: experiment {exp_id}, web UI http://127.0.0.1:{cfg.port} (NNI listens on every interface: "
          "see the README's Security section)", flush=True)
    status: dict[str, Any] = {}
    try:
        last = None
        while True:
            try:
                status = _get(cfg.port, "check-status")
                trials = _get(cfg.port, "trial-jobs")
            except OSError:
                time.sleep(2)
                continue
            done = sum(t["status"] not in ("WAITING", "RUNNING", "UNKNOWN") for t in trials)
            line = f"search: {status.get('status')} {done}/{cfg.experiment.get('maxTrialNumber', '?')} trials done"
            if line != last:
                print(f"{line} ({time.time() - started:.0f} s)", flush=True)
                last = line
            if status.get("status") in ("DONE", "ERROR", "STOPPED"):
                break
            time.sleep(5)
    finally:
        subprocess.run([_nnictl(), "stop", exp_id], capture_output=True, text=True, timeout=120)
    if status.get("status") == "ERROR":
        raise RuntimeError(f"the experiment ended with ERROR: {status.get('errors')}; see nnictl log stderr {exp_id}")
    work = Path(nni_config["experimentWorkingDirectory"])
    return {"experiment_id": exp_id, "experiment_dir": str(work / exp_id), "status": status.get("status"),
            "search_wall_seconds": round(time.time() - started, 1)}


def collect_trials(exp_dir: Path) -> list[dict[str, Any]]:
    """Every finished trial of an experiment directory: its ``result.json`` plus ``trial``, ``dir``
    and the tuned parameters it ran with (``tuned``, from its ``parameters.json``). NNI keeps local
    trials under ``<experiment dir>/environments/<env>/trials/<trial id>/``; trials without a
    readable result are left out."""
    rows = []
    for result_file in sorted(Path(exp_dir).glob("**/trials/*/result.json")):
        try:
            result = json.loads(result_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        try:
            tuned = json.loads(result_file.with_name("parameters.json").read_text()).get("parameters", {})
        except (OSError, json.JSONDecodeError):
            tuned = result.get("hyperparameters", {})
        rows.append({**result, "trial": result_file.parent.name, "dir": str(result_file.parent), "tuned": tuned,
                     "tuned_text": json.dumps(tuned, sort_keys=True)})
    return rows


# ---------------------------------------------------------------------- stage 2: retraining
def _retrain_one(arch: str, seed: int, recipe: dict[str, Any], run_dir: str, parallel: bool) -> dict[str, Any]:
    """One seed's retraining; in a worker process when ``parallel`` (one line per epoch, no bar)."""
    from nni_visplugin.retrain import RetrainConfig, epoch_line, retrain

    config = RetrainConfig(arch=arch, seed=seed, **recipe, **({"progress": False} if parallel else {}))

    def on_epoch(entry: dict[str, Any]) -> None:
        print(f"retrain seed {seed}: {epoch_line(entry, config.epochs)}", flush=True)

    return retrain(config, run_dir, on_epoch=on_epoch if parallel else None)


def _remeasure_latency(runs: dict[Path, dict[str, Any]]) -> None:
    """Measure again, one model at a time, the latency of seeds that trained side by side (each
    measured its own while the others were still training); correct their metrics, in ``runs``
    (run directory -> metrics) and in ``metrics.json``."""
    import torch

    from nni_visplugin.latency import measure_model
    from nni_visplugin.search import load_model, write_json

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
        from nni_visplugin.search import write_json

        stage_file = root / "stage.json"
        before = json.loads(stage_file.read_text())["wall_seconds"] if stage_file.exists() else 0.0
        write_json(stage_file, {"wall_seconds": round(before + time.time() - started, 1), "jobs": cfg.jobs})
    return [{**done[seed], "dir": str(root / f"seed{seed}")} for seed in cfg.seeds]


# ---------------------------------------------------------------------- the whole thing
def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    from nni_visplugin.export import export_model
    from nni_visplugin.report import PUBLISHED_FASHION_MNIST, write_report
    from nni_visplugin.search import write_json

    started = time.time()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    search_file = out / "search.json"
    searched = not search_file.exists()
    fresh_seeds = [s for s in cfg.seeds if not _seed_done(out / "retrain", s)]
    if search_file.exists():
        search = json.loads(search_file.read_text())
        print(f"search: done before ({search['experiment_id']}), reusing {search_file}", flush=True)
    else:
        search = run_experiment(cfg)
        trials = collect_trials(Path(search["experiment_dir"]))
        if not trials:
            raise RuntimeError(f"no trial of experiment {search['experiment_id']} finished with a result")
        best = max(trials, key=lambda t: t["val_accuracy"])  # validation accuracy only: the test split stays unseen
        search.update({"trials": trials, "best": best})
        write_json(search_file, search)
    best = search["best"]
    print(f"picked: trial {best['trial']} (val accuracy {best['val_accuracy']:.4f}, {best['num_params']} parameters "
          f"as its search scored it)", flush=True)

    runs = retrain_seeds(cfg, Path(best["dir"]) / "arch.json", out / "retrain")
    stage_file = out / "retrain" / "stage.json"
    stage = json.loads(stage_file.read_text()) if stage_file.exists() else {"wall_seconds": 0.0}

    exports = {}
    for fmt in cfg.export:
        exports[fmt] = export_model(runs[0]["dir"], fmt)
        print(f"export {fmt}: {exports[fmt].get('file', '')} (max abs difference to PyTorch "
              f"{exports[fmt].get('max_abs_diff')})", flush=True)

    accs = [r["test_accuracy"] for r in runs]
    mean = statistics.mean(accs)
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    comparison = [{"model": "this pipeline (search + retrain)", "test_accuracy": mean, "params": runs[0]["num_params"],
                   "note": f"mean of seeds {', '.join(map(str, cfg.seeds))} (std {spread:.4f}): "
                           + ", ".join(f"{a:.4f}" for a in accs)}]
    if cfg.baselines and cfg.baselines.exists():
        comparison += json.loads(cfg.baselines.read_text())
    if cfg.retrain.get("dataset") == "fashion-mnist":
        comparison += PUBLISHED_FASHION_MNIST
    total = time.time() - started
    summary = {
        "config": str(cfg.source), "experiment": search["experiment_id"], "searches": len(search["trials"]),
        "picked trial": best["trial"], "picked val accuracy": best["val_accuracy"],
        "test accuracy (mean over seeds)": mean, "test accuracy std": spread, "seeds": list(cfg.seeds),
        "parameters": runs[0]["num_params"], "FLOPs per image": runs[0].get("flops"),
        "latency (ms, batch 1)": runs[0].get("latency_ms"),
        "search wall time (s)": search.get("search_wall_seconds"),
        "retrain wall time (s)": stage["wall_seconds"] or round(sum(r.get("wall_seconds", 0) for r in runs), 1),
        "retrain seeds at once": cfg.jobs,
        "pipeline wall time this run (s)": round(total, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }
    history = json.loads((Path(best["dir"]) / "alphas.json").read_text())
    arch = json.loads((Path(best["dir"]) / "arch.json").read_text())
    report = write_report(out, title=f"nni-visplugin pipeline: {cfg.source.name if cfg.source else out.name}",
                          summary=summary, trials=search["trials"], history=history, arch=arch, runs=runs,
                          comparison=comparison)
    # Every call of the command on this output directory, with what it did: a pipeline resumed or
    # extended (more seeds) keeps the wall time of the call that searched and retrained.
    previous = out / "pipeline.json"
    calls = json.loads(previous.read_text()).get("calls", []) if previous.exists() else []
    calls.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)), "searched": searched,
                  "retrained seeds": fresh_seeds, "seeds": list(cfg.seeds), "jobs": cfg.jobs,
                  "threads": cfg.retrain.get("threads", 0), "wall_seconds": round(time.time() - started, 1)})
    result = {"summary": summary, "runs": runs, "exports": exports, "comparison": comparison, "report": str(report),
              "calls": calls}
    write_json(out / "pipeline.json", result)
    print(f"report: {report}", flush=True)
    return result
