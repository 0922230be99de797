"""NNI's web UI, opened in a real (headless) Chromium, shows the plugin's trials and their results.

Skipped only where no Chromium is installed; `.ci/run` installs Debian's chromium so CI runs it.
Screenshots are kept in test-artifacts/webui/.
"""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO, run_experiment

from test_nni_integration import _shipped_config, _tiny

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def _final(metric: dict) -> dict:
    data = json.loads(metric["data"])
    return json.loads(data) if isinstance(data, str) else data


def test_web_ui_shows_trials_and_results(tmp_path):
    browse = tmp_path / "browse"
    report = run_experiment(tmp_path, _tiny(_shipped_config(), trials=2), timeout=300, browse_dir=browse)
    assert report["status"] == "DONE", report
    artifacts = REPO / "test-artifacts" / "webui"
    artifacts.mkdir(parents=True, exist_ok=True)
    for png in browse.glob("*.png"):
        shutil.copy(png, artifacts / png.name)
    assert report["browsed"]["oview"]["screenshot"] and report["browsed"]["detail"]["screenshot"]

    overview = (browse / "oview.html").read_text()
    assert "DONE" in overview and "darts-digits" in overview and "nni_visplugin.tuners.OptunaTuner" in overview

    detail = (browse / "detail.html").read_text()
    finals = {m["trialJobId"]: _final(m) for m in report["metrics"] if m["type"] == "FINAL"}
    assert len(finals) == 2
    for trial in report["trials"]:
        assert trial["trialJobId"] in detail  # every trial is listed
        assert f"{finals[trial['trialJobId']]['default']:.6f} (FINAL)" in detail  # with its final result
    assert detail.count("SUCCEEDED") >= 1
    # the per-epoch curve the UI draws comes from these intermediate results
    periodical = [m for m in report["metrics"] if m["type"] == "PERIODICAL"]
    assert {m["trialJobId"] for m in periodical} == set(finals)
