"""Real NNI experiments for the tests: each on loopback, in a private network namespace, stopped by process id."""
from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DRIVER = Path(__file__).with_name("nni_driver.py")
TOYS = Path(__file__).with_name("nni_toys")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=None)
def netns_available() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def require_netns() -> None:
    """NNI's manager listens on every interface: it runs in a private network namespace or not at all."""
    if not netns_available():
        pytest.skip("needs a private network namespace (unshare -n and ip): apt-get install iproute2 util-linux")


def run_experiment(tmp_path: Path, config: dict, timeout: float = 400, browse_dir: Path | None = None,
                   kill_after: int = 0, env: dict[str, str] | None = None) -> dict:
    """Run ``config`` with the real nnictl and NNI manager; returns what the manager reported.

    The experiment gets its own working directory and HOME (NNI keeps a manifest of experiments in
    ``~/nni-experiments``) under ``tmp_path``, a free port, and a
    private network namespace (the test skips without one), since NNI's manager cannot be told to listen on loopback only.
    """
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    config = {"experimentWorkingDirectory": str(tmp_path / "nni"), **config}
    config_path = tmp_path / "experiment.yml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "driver.json"
    env = {**os.environ, **(env or {}), "HOME": str(home),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, str(DRIVER), str(config_path), str(free_port()), str(out), str(timeout)]
    if browse_dir is not None:
        cmd.append(str(browse_dir))
    if kill_after:
        env["NNI_DRIVER_KILL_AFTER"] = str(kill_after)  # crash everything after that many trials, then resume
    require_netns()
    cmd = ["unshare", "-n"] + cmd
    env["NNI_DRIVER_NETNS"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 240, cwd=REPO)
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def run_in_netns(cmd: list[str], tmp_path: Path, timeout: float, env: dict[str, str] | None = None,
                 interpreter_on_path: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` (which starts NNI managers) with HOME under ``tmp_path`` and in a private network
    namespace whose only interface is loopback. With
    ``interpreter_on_path=False`` the test interpreter's directory is taken off PATH, as for a user
    who did not activate the virtual environment."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p != bin_dir]
    if interpreter_on_path:
        path.insert(0, bin_dir)
    env = {**os.environ, **(env or {}), "HOME": str(home), "PATH": os.pathsep.join(path)}
    require_netns()
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def shipped_config() -> dict:
    """experiments/darts.yml as a dict."""
    return yaml.safe_load((REPO / "experiments" / "darts.yml").read_text())


def tiny_config(config: dict, trials: int) -> dict:
    """The shipped experiment, shrunk: fewer and shorter trials on a smaller supernet."""
    config = dict(config)
    config["maxTrialNumber"] = trials
    config["maxExperimentDuration"] = "8m"
    config["trialCodeDirectory"] = str(REPO / "experiments")
    config["tuner"] = {**config["tuner"], "codeDirectory": str(REPO / "experiments")}
    if "assessor" in config:  # kept: with at most 2 epochs it judges but never stops a trial (warm-up)
        config["assessor"] = {**config["assessor"], "codeDirectory": str(REPO / "experiments")}
    config["searchSpace"] = {**config["searchSpace"], "epochs": {"_type": "choice", "_value": [1, 2]}}
    config["trialCommand"] = (config["trialCommand"].replace("space.width=8", "space.width=4")
                              .replace("space.num_cells=5", "space.num_cells=2")
                              .replace("final_epochs=15", "final_epochs=1")
                              + " --set max_train_samples=300")
    return config
