"""A self-contained HTML report of a pipeline run, with its figures as PNG files next to it.

Everything is drawn from the files the pipeline leaves (the trials' ``result.json`` and
``alphas.json``, the retrained models' ``metrics.json``), so a report can be rebuilt later with
:func:`write_report`.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

__all__ = ["write_report", "draw_cell", "PUBLISHED_FASHION_MNIST"]

# The benchmark table shipped with Fashion-MNIST (zalandoresearch/fashion-mnist README), test accuracy.
PUBLISHED_FASHION_MNIST = [
    {"model": "2 Conv <100K parameters", "test_accuracy": 0.925, "note": "published benchmark"},
    {"model": "Google AutoML Vision", "test_accuracy": 0.939, "note": "published benchmark, 24 compute hours"},
    {"model": "ResNet18", "test_accuracy": 0.949, "note": "published benchmark"},
    {"model": "DENSER (NAS)", "test_accuracy": 0.953, "note": "published benchmark"},
    {"model": "WRN-28-10", "test_accuracy": 0.959, "note": "published benchmark"},
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps a legend placed outside the axes
    _plt().close(fig)
    return path


# ---------------------------------------------------------------------- figures
def plot_alpha_evolution(history: Sequence[dict[str, Any]], path: Path, prefix: str = "") -> Path | None:
    """One panel per edge: the softmax weight of every operation after each search epoch, every panel
    on the same 0-1 scale with the uniform weight 1/n dashed, so an undecided search looks undecided."""
    labels = sorted({label for r in history for label in r.get("alphas", {}) if label.startswith(prefix)},
                    key=_natural)
    labels = [lb for lb in labels if len(history[-1]["alphas"].get(lb, {}).get("names", [])) > 1]
    if not labels:
        return None
    plt = _plt()
    cols = min(5, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.3 * rows), squeeze=False, sharex=True, sharey=True)
    epochs = [r["epoch"] + 1 for r in history]
    names = history[-1]["alphas"][labels[0]]["names"]
    for ax, label in zip(axes.flat, labels):
        entry_names = history[-1]["alphas"][label]["names"]
        for k, name in enumerate(entry_names):
            ax.plot(epochs, [r["alphas"][label]["softmax"][k] for r in history], label=str(name), lw=1.2)
        ax.axhline(1 / len(entry_names), color="grey", ls="--", lw=0.8)
        ax.set_ylim(0, 1)
        chosen = history[-1].get("arch", {}).get(label)
        ax.set_title(f"{label}" + (f"\n-> {chosen}" if chosen is not None else ""), fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    handles, legend_labels = axes.flat[0].get_legend_handles_labels()
    spare = list(axes.flat)[len(labels):]
    if spare:
        spare[0].legend(handles, legend_labels, loc="center", fontsize=7, frameon=False)
    elif len(names) <= 12:
        fig.legend(handles, legend_labels, loc="upper center", ncol=min(len(names), 6), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("softmax(alpha) per edge over the search epochs (dashed: uniform)", fontsize=9)
    return _save(fig, path)


def draw_cell(arch: dict[str, Any], cell: str, path: Path) -> Path | None:
    """The derived ``cell`` ("normal" or "reduce") of a darts_cell architecture as a graph."""
    inputs = {int(k.rsplit("_", 1)[1]): v for k, v in arch.items() if k.startswith(f"{cell}/input_")}
    if not inputs:
        return None
    plt = _plt()
    n = max(inputs) + 1
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i in range(n):
        pos[i + 2] = (1.0 + i, 1.2 * (1 if i % 2 else -1) * 0.6)
    pos["out"] = (n + 1.0, 0.0)
    names = {0: "c_{k-2}", 1: "c_{k-1}", **{i + 2: str(i) for i in range(n)}, "out": "c_{k}"}
    fig, ax = plt.subplots(figsize=(2.0 + 1.4 * n, 3.0))
    for i in range(n):
        for j in inputs[i]:
            op = arch.get(f"{cell}/op_{i}_{j}", "?")
            (x0, y0), (x1, y1) = pos[j], pos[i + 2]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "->", "color": "tab:red" if op == "skip_connect" else "0.25",
                                    "lw": 1.2, "shrinkA": 12, "shrinkB": 12})
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, op, fontsize=7, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        (x0, y0), (x1, y1) = pos[i + 2], pos["out"]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "color": "0.7", "lw": 0.8, "shrinkA": 12, "shrinkB": 12})
    for key, (x, y) in pos.items():
        ax.text(x, y, names[key], ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "circle" if key not in (0, 1, "out") else "round", "fc": "#e8f0fe", "ec": "0.3"})
    ax.set_xlim(-0.6, n + 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.axis("off")
    ax.set_title(f"{cell} cell (red: skip connections)", fontsize=9)
    return _save(fig, path)


def plot_training_curves(runs: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Training loss (and accuracy where recorded) per epoch of every retraining run."""
    runs = [r for r in runs if r.get("curve")]
    if not runs:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for r in runs:
        epochs = [c.get("epoch", i) + 1 for i, c in enumerate(r["curve"])]
        ax1.plot(epochs, [c.get("train_loss") for c in r["curve"]], label=f"seed {r.get('seed')}")
        acc = [c.get("train_accuracy") for c in r["curve"]]
        if any(a is not None for a in acc):
            ax2.plot(epochs, acc, label=f"seed {r.get('seed')}")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("training accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("retraining from scratch", fontsize=9)
    return _save(fig, path)


def plot_trials(trials: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Validation accuracy of each search's derived network against each tuned hyperparameter."""
    trials = [t for t in trials if "val_accuracy" in t]
    keys = sorted({k for t in trials for k, v in (t.get("tuned") or {}).items() if isinstance(v, (int, float))})
    if not trials or not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 2.8), squeeze=False)
    best = max(trials, key=lambda t: t["val_accuracy"])
    for ax, key in zip(axes.flat, keys):
        xs = [t["tuned"].get(key) for t in trials]
        ys = [t["val_accuracy"] for t in trials]
        ax.scatter(xs, ys, s=16, c="tab:blue")
        ax.scatter([best["tuned"].get(key)], [best["val_accuracy"]], s=40, c="tab:red", label="picked")
        if all(isinstance(x, (int, float)) and x > 0 for x in xs) and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel("val accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{len(trials)} searches (one NNI trial each)", fontsize=9)
    return _save(fig, path)


# ---------------------------------------------------------------------- the page
def _natural(label: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)]


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            v = row.get(key, "")
            if isinstance(v, float):
                v = f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
            elif isinstance(v, int) and not isinstance(v, bool):
                v = f"{v:,}"
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(out_dir: str | Path, *, title: str, summary: dict[str, Any], trials: Sequence[dict[str, Any]],
                 history: Sequence[dict[str, Any]], arch: dict[str, Any], runs: Sequence[dict[str, Any]],
                 comparison: Sequence[dict[str, Any]], warning: str | None = None) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/figures/*.png``; returns the page's path.

    ``trials``: one row per search (``trial``, ``val_accuracy``, ``num_params``, ``tuned``);
    ``history``: the picked search's per-epoch records (``alphas.json``); ``runs``: the retrained
    models' ``metrics.json``; ``comparison``: rows of ``model``, ``test_accuracy``, ``params``, ``note``;
    ``warning``: shown first, under the title (an undecided search).
    """
    out = Path(out_dir)
    fig_dir = out / "figures"
    figures: list[tuple[str, Path | None]] = [
        ("Hyperparameter trials", plot_trials(trials, fig_dir / "trials.png")),
        ("Alpha evolution, normal cell", plot_alpha_evolution(history, fig_dir / "alphas_normal.png", "normal/")
         if history else None),
        ("Alpha evolution, reduction cell", plot_alpha_evolution(history, fig_dir / "alphas_reduce.png", "reduce/")
         if history else None),
        ("Derived normal cell", draw_cell(arch, "normal", fig_dir / "cell_normal.png")),
        ("Derived reduction cell", draw_cell(arch, "reduce", fig_dir / "cell_reduce.png")),
        ("Retraining curves", plot_training_curves(runs, fig_dir / "retraining.png")),
    ]
    if history and not any(p for name, p in figures if name.startswith("Alpha")):
        figures.insert(1, ("Alpha evolution", plot_alpha_evolution(history, fig_dir / "alphas.png")))
    parts = [f"<h1>{html.escape(title)}</h1>",
             *([f"<p class=\"warning\"><strong>Warning:</strong> the picked search ended {html.escape(warning)}.</p>"]
               if warning else []),
             "<h2>Summary</h2>", _table([{"key": k, "value": v} for k, v in summary.items()],
                                        [("key", ""), ("value", "")]),
             "<h2>Final metrics (test split, measured once at the end of each retraining)</h2>",
             _table(runs, [("seed", "seed"), ("test_accuracy", "test accuracy"), ("num_params", "parameters"),
                           ("flops", "FLOPs"), ("latency_ms", "latency (ms)"), ("epochs", "epochs"),
                           ("wall_seconds", "wall (s)")]),
             "<h2>Comparison</h2>",
             _table(comparison, [("model", "model"), ("test_accuracy", "test accuracy"), ("params", "parameters"),
                                 ("note", "")]),
             "<h2>Searches</h2>",
             _table(sorted(trials, key=lambda t: -t.get("val_accuracy", 0)),
                    [("trial", "trial"), ("val_accuracy", "val accuracy"), ("num_params", "parameters"),
                     ("tuned_text", "hyperparameters")])]
    for name, path in figures:
        if path is not None:
            rel = path.relative_to(out).as_posix()
            parts.append(f"<h2>{html.escape(name)}</h2><img src=\"{html.escape(rel)}\" alt=\"{html.escape(name)}\">")
    parts.append("<h2>Derived architecture</h2><pre>" + html.escape(json.dumps(arch, indent=1)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:left}img{max-width:100%;border:1px solid #eee}"
             ".warning{background:#fff3cd;border:1px solid #e0b100;padding:0.6em}")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
