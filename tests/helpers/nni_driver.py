"""Drive one real NNI experiment: ``nnictl create``, wait, collect, ``nnictl stop``, kill leftovers.

Run by the integration tests as a separate process, inside a private network namespace when the
machine allows one (``unshare -n``): NNI 3.0's manager listens on every interface and has no option
to bind to loopback, so the namespace, whose only interface is ``lo``, keeps it off the network.

Usage: python nni_driver.py CONFIG PORT OUT_JSON TIMEOUT_SECONDS [BROWSE_DIR]

With BROWSE_DIR, once the experiment has ended (and before it is stopped), headless Chromium opens
the web UI's pages from inside the same namespace and saves each page's rendered DOM and a
screenshot there; then, driven over the DevTools protocol, it opens each trial's intermediate-result
chart from the trial list and records what the chart shows (``intermediate-N.png``, N the trial's
place in sequence order).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

from nni_visplugin.hpo.experiment import nni_rest


def _web_logs(port: int) -> dict:
    """The two logs the web UI's log panel shows (it fetches them from these addresses)."""
    logs = {}
    for name in ("dispatcher.log", "nnimanager.log"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/logs/{name}", timeout=10) as r:
                logs[name] = r.read().decode(errors="replace")[-20000:]
        except OSError as exc:
            logs[name] = f"<not served: {exc}>"
    return logs


def kill_leftovers(exp_dir: Path, manager_pid: int | None) -> list[int]:
    """SIGKILL every process of this experiment that survived ``nnictl stop``."""
    killed = []
    needle = str(exp_dir)
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "environ"]):
        try:
            info = proc.info
            mine = (proc.pid == manager_pid
                    or any(needle in part for part in (info.get("cmdline") or []))
                    or needle in (info.get("cwd") or "")
                    or (info.get("environ") or {}).get("NNI_OUTPUT_DIR", "").startswith(needle))
            if mine and proc.pid != os.getpid():
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return killed


PAGES = {"oview": "oview", "detail": "detail"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1600,1100", "--virtual-time-budget=20000"]


def _browse(port: int, out_dir: Path, trial_ids: list[str]) -> dict:
    import shutil
    import tempfile

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {}
    for name, page in PAGES.items():
        url = f"http://127.0.0.1:{port}/{page}"
        with tempfile.TemporaryDirectory() as profile:
            flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
            dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
            (out_dir / f"{name}.html").write_text(dom.stdout)
        with tempfile.TemporaryDirectory() as profile:
            flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
            subprocess.run(flags + [f"--screenshot={out_dir / (name + '.png')}", url], capture_output=True, timeout=120)
        done[name] = {"url": url, "dom_bytes": len(dom.stdout), "screenshot": (out_dir / f"{name}.png").exists()}
    from webui_charts import show_intermediate

    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]
    done["intermediate"] = show_intermediate(chromium, flags, f"http://127.0.0.1:{port}/detail", out_dir, trial_ids)
    return done


def _kill_and_resume(port: int, exp_id: str, work_dir: Path, nnictl: str, after: int, report: dict) -> None:
    """Once ``after`` trials have succeeded with others still running, SIGKILL the manager, the
    dispatcher and the trials (a crash of the whole machine, as far as NNI can tell), then
    ``nnictl resume`` the experiment on the same port."""
    deadline = time.time() + 300
    while time.time() < deadline:
        trials = nni_rest(port, "trial-jobs")
        done = [t for t in trials if t["status"] == "SUCCEEDED"]
        running = [t for t in trials if t["status"] == "RUNNING"]
        if len(done) >= after and running:
            break
        time.sleep(0.5)
    else:
        raise RuntimeError("the experiment never reached the state to interrupt")
    entries = json.loads((Path(os.environ["HOME"]) / "nni-experiments" / ".experiment").read_text())
    report["killed_at"] = nni_rest(port, "trial-jobs")
    report["killed_pids"] = kill_leftovers(work_dir, entries[exp_id]["pid"])
    time.sleep(2)
    resumed = subprocess.run([nnictl, "resume", exp_id, "--port", str(port), "--experiment_dir", str(work_dir)],
                             capture_output=True, text=True, timeout=120)
    report["resume_output"] = resumed.stdout[-2000:] + resumed.stderr[-2000:]
    if resumed.returncode != 0:
        raise RuntimeError(f"nnictl resume failed: {report['resume_output']}")


def main() -> int:
    config_path, port, out_path, timeout = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    if os.environ.get("NNI_DRIVER_NETNS") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    config = yaml.safe_load(config_path.read_text())
    work_dir = Path(config["experimentWorkingDirectory"])
    nnictl = str(Path(sys.executable).with_name("nnictl"))
    report: dict = {"status": None, "errors": [], "trials": [], "metrics": [], "create_output": ""}
    exp_id = None
    manager_pid = None
    try:
        created = subprocess.run([nnictl, "create", "--config", str(config_path), "--port", str(port)],
                                 capture_output=True, text=True, timeout=120)
        report["create_output"] = created.stdout[-3000:] + created.stderr[-3000:]
        if created.returncode != 0:
            report["status"] = "CREATE_FAILED"
            return 0
        kill_after = int(os.environ.get("NNI_DRIVER_KILL_AFTER", "0"))
        if kill_after:
            for _ in range(60):
                try:
                    exp_id = nni_rest(port, "experiment")["id"]
                    break
                except OSError:
                    time.sleep(1)
            _kill_and_resume(port, exp_id, work_dir, nnictl, kill_after, report)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                status = nni_rest(port, "check-status")
            except OSError:
                time.sleep(1)
                continue
            report["status"], report["errors"] = status.get("status"), status.get("errors", [])
            report.setdefault("status_seen_at", {}).setdefault(report["status"], time.time())
            if report["status"] in ("DONE", "ERROR", "STOPPED"):
                break
            time.sleep(2)
        else:
            report["timed_out"] = True
        report["experiment"] = nni_rest(port, "experiment")
        exp_id = report["experiment"].get("id")
        report["trials"] = nni_rest(port, "trial-jobs")
        report["metrics"] = nni_rest(port, "metric-data")
        if report["status"] == "ERROR":
            report["web_logs"] = _web_logs(port)
            shown = subprocess.run([nnictl, "log", "stderr", exp_id], capture_output=True, text=True, timeout=60)
            report["nnictl_log_stderr"] = shown.stdout[-5000:] + shown.stderr[-2000:]
        if len(sys.argv) > 5:
            trials = sorted(report["trials"], key=lambda t: t["sequenceId"])
            report["browsed"] = _browse(port, Path(sys.argv[5]), [t["trialJobId"] for t in trials])
    finally:
        manifest = Path(os.environ["HOME"]) / "nni-experiments" / ".experiment"
        if manifest.exists():
            entries = json.loads(manifest.read_text())
            if exp_id is None and entries:
                exp_id = list(entries)[-1]
            manager_pid = entries.get(exp_id, {}).get("pid") if exp_id else None
        if exp_id is not None:
            subprocess.run([nnictl, "stop", exp_id], capture_output=True, timeout=60)
        report["experiment_id"] = exp_id
        report["experiment_dir"] = str(work_dir / exp_id) if exp_id else None
        report["killed_after_stop"] = kill_leftovers(work_dir, manager_pid)
        out_path.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
