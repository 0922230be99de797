"""The experiment runner: ``nnictl create`` on a config, followed through NNI's REST API to its end."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from nni_visplugin.config.pipeline import PipelineConfig
from nni_visplugin.utils.errors import ConfigError, UserError

__all__ = ["run_experiment", "collect_trials", "nni_rest", "ExperimentError"]


class ExperimentError(UserError):
    """NNI could not start the experiment, or it ended in ERROR; the message says where to look."""


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


def nni_rest(port: int, path: str, timeout: float = 10) -> Any:
    """GET ``path`` of the NNI manager's REST API on this machine's loopback, as JSON."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/{path}", timeout=timeout) as r:
        return json.loads(r.read())


def _nnictl() -> str:
    found = Path(sys.executable).with_name("nnictl")
    return str(found) if found.exists() else (shutil.which("nnictl") or "nnictl")


def run_experiment(cfg: PipelineConfig) -> dict[str, Any]:
    """``nnictl create``, follow it to the end (printing progress), ``nnictl stop``."""
    from nni_visplugin.hpo.check import check_experiment

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
        raise ExperimentError("nnictl create failed: " + " | ".join(output.strip().splitlines()[-8:]))
    exp_id = match.group(1)
    print(f"search: experiment {exp_id}, web UI http://127.0.0.1:{cfg.port} (NNI listens on every interface: "
          "see the README's Security section)", flush=True)
    status: dict[str, Any] = {}
    try:
        last = None
        while True:
            try:
                status = nni_rest(cfg.port, "check-status")
                trials = nni_rest(cfg.port, "trial-jobs")
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
        raise ExperimentError(f"the experiment ended with ERROR: {status.get('errors')}; see nnictl log stderr {exp_id}")
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
