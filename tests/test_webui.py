"""NNI's web UI, opened in a real (headless) Chromium, shows the plugin's trials and their results.

Skipped only where no Chromium is installed; `.ci/run` installs Debian's chromium so CI runs it.
Screenshots are kept in test-artifacts/webui/: the overview, the trial list, and each trial's
intermediate-result chart with the mouse on its last point (intermediate-N.png, in trial order).
"""
from __future__ import annotations

import json
import re
import shutil

import pytest

from pathlib import Path

from helpers.nni import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def _value(metric: dict):
    """What the trial reported: NNI's REST API gives it JSON-encoded, a dict or number inside a string."""
    data = json.loads(metric["data"])
    return json.loads(data) if isinstance(data, str) else data


def test_web_ui_shows_trials_and_results(darts_experiment):
    report = darts_experiment  # the shrunk darts.yml experiment, browsed before it was stopped
    browse = Path(report["browse_dir"])
    assert report["status"] == "DONE", report
    artifacts = REPO / "test-artifacts" / "webui"
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.glob("*.png"):  # trial counts and failures differ from run to run
        old.unlink()
    for png in browse.glob("*.png"):
        shutil.copy(png, artifacts / png.name)
    assert report["browsed"]["oview"]["screenshot"] and report["browsed"]["detail"]["screenshot"]

    overview = (browse / "oview.html").read_text()
    assert "DONE" in overview and "darts-digits" in overview and "nni_visplugin.tuners.OptunaTuner" in overview

    detail = (browse / "detail.html").read_text()
    finals = {m["trialJobId"]: _value(m) for m in report["metrics"] if m["type"] == "FINAL"}
    assert len(finals) == len(report["trials"]) == 4
    for trial in report["trials"]:
        assert trial["trialJobId"] in detail  # every trial is listed
        assert f"{finals[trial['trialJobId']]['default']:.6f} (FINAL)" in detail  # with its final result
    assert detail.count("SUCCEEDED") >= 1
    periodical = [m for m in report["metrics"] if m["type"] == "PERIODICAL"]
    assert {m["trialJobId"] for m in periodical} == set(finals)

    # Each trial's per-epoch curve, opened with a click on its row's "Intermediate" button.
    shown = report["browsed"]["intermediate"]
    assert "error" not in shown, f"{shown['error']} (see {artifacts}/intermediate-error.png)"
    for trial in report["trials"]:
        trial_id = trial["trialJobId"]
        reported = [_value(m) for m in sorted(periodical, key=lambda m: m["sequence"]) if m["trialJobId"] == trial_id]
        curve = [v["default"] if isinstance(v, dict) else v for v in reported]  # NNI plots a dict's "default"
        chart = shown[trial_id]
        assert chart["title"] == "Intermediate results"
        (series,) = chart["series"]
        assert series["name"] == trial_id and series["type"] == "line"
        assert series["data"] == pytest.approx(curve)  # every epoch, in order
        assert all(point["inked"] > 0 for point in series["points"]), series  # painted where each value lies
        # the mouse on the last point brings up the chart's own label for it
        tooltip = chart["tooltip"] or ""
        assert f"Trial ID: {trial_id}" in tooltip, chart
        value = re.search(r"Intermediate metric: (\S+)", tooltip)
        assert value and float(value.group(1)) == pytest.approx(curve[-1]), tooltip
        assert (artifacts / chart["screenshot"]).is_file()
