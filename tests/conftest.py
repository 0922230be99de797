"""Shared fixtures: tiny data, and a runner for real NNI experiments on loopback."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("nni_driver.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _netns_available() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_experiment(tmp_path: Path, config: dict, timeout: float = 400, browse_dir: Path | None = None,
                   kill_after: int = 0, env: dict[str, str] | None = None) -> dict:
    """Run ``config`` with the real nnictl and NNI manager; returns what the manager reported.

    The experiment gets its own working directory and HOME (NNI keeps a manifest of experiments in
    ``~/nni-experiments``) under ``tmp_path``, a free port, and -- where the machine allows it -- a
    private network namespace, since NNI's manager cannot be told to listen on loopback only.
    """
    import yaml

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
    if _netns_available():
        cmd = ["unshare", "-n"] + cmd
        env["NNI_DRIVER_NETNS"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 240, cwd=REPO)
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def run_in_netns(cmd: list[str], tmp_path: Path, timeout: float, env: dict[str, str] | None = None,
                 interpreter_on_path: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` (which starts NNI managers) with HOME under ``tmp_path`` and, where the machine
    allows it, in a private network namespace whose only interface is loopback. With
    ``interpreter_on_path=False`` the test interpreter's directory is taken off PATH, as for a user
    who did not activate the virtual environment."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p != bin_dir]
    if interpreter_on_path:
        path.insert(0, bin_dir)
    env = {**os.environ, **(env or {}), "HOME": str(home), "PATH": os.pathsep.join(path)}
    if _netns_available():
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def darts_experiment(tmp_path_factory):
    """The shipped experiments/darts.yml, shrunk to 4 short trials, run once for the whole session;
    where Chromium is installed its web UI is browsed (and clicked through) before it is stopped."""
    import shutil

    from test_nni_integration import _shipped_config, _tiny

    tmp = tmp_path_factory.mktemp("nni")
    browse = tmp / "browse" if (shutil.which("chromium") or shutil.which("chromium-browser")) else None
    report = run_experiment(tmp, _tiny(_shipped_config(), trials=4), timeout=420, browse_dir=browse)
    report["browse_dir"] = str(browse) if browse else None
    return report


@pytest.fixture
def tiny_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g, dtype=torch.float32)
    y = torch.arange(48) % 3
    x[:, 0, :3, :3] += y.view(-1, 1, 1).float()  # a learnable signal
    return x, y


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Latency tables and other caches go to a temporary directory, not the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
