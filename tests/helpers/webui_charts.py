"""What the NNI web UI's charts show, looked at in a real browser: found by clicking as a user would,
read from the page's own chart objects and pixels, and photographed."""
from __future__ import annotations

import json
import time
from pathlib import Path

from chromium_cdp import BrowserError, Chromium

# Page scripts for the trial list of /detail. A row is found by the trial id in its "id" cell.
_INTERMEDIATE_BUTTON = """(() => {
  const row = [...document.querySelectorAll('#tableList .ms-DetailsRow')].find(
      r => r.querySelector('[data-automation-key="id"] .idCopy > div')?.innerText.trim() === %s);
  const button = row?.querySelector('[data-automation-key="_operation"] button[title="Intermediate"]');
  if (!button) return null;
  button.scrollIntoView({block: 'center'});
  const box = button.getBoundingClientRect();
  return {x: box.left + box.width / 2, y: box.top + box.height / 2};
})()"""
# The dialog's chart, read from its own echarts instance (found through React's fiber of the chart's
# element): the series it plots, and where each point is on screen.
_DIALOG_CHART = """(() => {
  const dialog = document.querySelector('.compare-modal');
  const holder = dialog?.querySelector('[_echarts_instance_]');
  const canvas = holder?.querySelector('canvas');
  if (!canvas || !canvas.width) return null;
  const key = Object.keys(holder).find(k => k.startsWith('__reactFiber$'));
  let fiber = key && holder[key];
  while (fiber && !fiber.stateNode?.getEchartsInstance) fiber = fiber.return;
  if (!fiber) return {error: 'no echarts component above the chart element'};
  const chart = fiber.stateNode.getEchartsInstance();
  const option = chart.getOption();
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  // Pixels of the series' own colour within 4 px of a point: the line is really painted there.
  const inked = (x, y, color) => {
    const [r, g, b] = [1, 3, 5].map(k => parseInt(color.slice(k, k + 2), 16));
    let n = 0;
    for (let dy = -4; dy <= 4; dy++) for (let dx = -4; dx <= 4; dx++) {
      const k = 4 * (Math.round((y + dy) * scale) * canvas.width + Math.round((x + dx) * scale));
      if (Math.abs(pixels[k] - r) + Math.abs(pixels[k + 1] - g) + Math.abs(pixels[k + 2] - b) < 60) n++;
    }
    return n;
  };
  const series = option.series.map((s, i) => {
    const color = option.color[i % option.color.length];
    return {name: s.name, type: s.type, data: s.data, color,
      points: s.data.map((v, j) => {
        const [x, y] = chart.convertToPixel({seriesIndex: i}, [j, v]);
        return {x: box.left + x, y: box.top + y, inked: inked(x, y, color)};
      })};
  });
  return {title: dialog.querySelector('span')?.innerText, canvas: [box.width, box.height], series};
})()"""
# The chart's tooltip while it is shown (echarts hides it with visibility: hidden).
_DIALOG_TOOLTIP = """(() => {
  const tip = document.querySelector('.compare-modal .tooldetailAccuracy');
  return tip && getComputedStyle(tip.parentElement).visibility !== 'hidden' ? tip.innerText : null;
})()"""
_DIALOG_CLOSE = """(() => {
  const box = document.querySelector('.compare-modal button[aria-label="Close popup modal"]')?.getBoundingClientRect();
  return box ? {x: box.left + box.width / 2, y: box.top + box.height / 2} : null;
})()"""


def show_intermediate(chromium: str, flags: list[str], url: str, out_dir: Path, trial_ids: list[str]) -> dict:
    """On the trial list at ``url``, click each trial's "Intermediate" button and look at the chart.

    Per trial: the dialog's title, the series its chart plots with each point's place on screen,
    and the tooltip the chart shows with the mouse on the last point; the dialog's DOM and a
    screenshot are saved. Clicks and mouse moves are input events, as a user's.
    """
    shown: dict = {}
    with Chromium(chromium, flags) as browser:
        browser.open(url)
        try:
            for n, trial_id in enumerate(trial_ids):
                where = browser.wait_for(_INTERMEDIATE_BUTTON % json.dumps(trial_id), 60, f"trial {trial_id}'s row")
                browser.mouse(where["x"], where["y"], click=True)
                chart = browser.wait_for(_DIALOG_CHART, 30, f"the intermediate chart of trial {trial_id}")
                # The line is drawn by an animation: read it again until the painted pixels stop changing.
                deadline, before = time.time() + 10, None
                while "error" not in chart and time.time() < deadline:
                    inked = [p["inked"] for s in chart["series"] for p in s["points"]]
                    if inked == before and all(inked):
                        break
                    before = inked
                    time.sleep(0.5)
                    chart = browser.evaluate(_DIALOG_CHART)
                tooltip = None
                if chart.get("series") and chart["series"][0]["points"]:
                    point = chart["series"][0]["points"][-1]
                    for _ in range(20):
                        browser.mouse(point["x"] + 40, point["y"] + 40, click=False)  # off, then on again
                        browser.mouse(point["x"], point["y"], click=False)
                        time.sleep(0.25)
                        if tooltip := browser.evaluate(_DIALOG_TOOLTIP):
                            break
                chart["tooltip"] = tooltip
                (out_dir / f"intermediate-{n}.html").write_text(
                    browser.evaluate("document.querySelector('.compare-modal').outerHTML"))
                browser.screenshot(out_dir / f"intermediate-{n}.png")
                chart["screenshot"] = f"intermediate-{n}.png"
                shown[trial_id] = chart
                close = browser.wait_for(_DIALOG_CLOSE, 10, "the dialog's close button")
                browser.mouse(close["x"], close["y"], click=True)
                browser.wait_for("!document.querySelector('.compare-modal')", 10, "the dialog to close")
        except BrowserError as exc:
            shown["error"] = str(exc)
            browser.screenshot(out_dir / "intermediate-error.png")
            (out_dir / "intermediate-error.html").write_text(browser.evaluate("document.documentElement.outerHTML"))
    return shown
