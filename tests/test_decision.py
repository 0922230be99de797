"""A search says whether its alphas decided: the measure, the warning in the log and the outcome, and
the report page that carries it."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.health import UNDECIDED, UNDECIDED_ENTROPY, decision
from nni_visplugin.nas.strategies.darts import DartsStrategy
from nni_visplugin.stages.report import write_report

from helpers.spaces import tiny_space


def test_decision_is_the_entropy_against_the_threshold():
    assert decision(UNDECIDED_ENTROPY - 1e-9)["decided"] and decision(0.2)["warning"] is None
    undecided = decision(UNDECIDED_ENTROPY)
    assert not undecided["decided"] and UNDECIDED in undecided["warning"]
    assert f"{UNDECIDED_ENTROPY:.3f}" in undecided["warning"]


def _search(tiny_images, **settings):
    x, y = tiny_images
    torch.manual_seed(0)
    strategy = DartsStrategy(epochs=2, **settings)
    return strategy.search(tiny_space("seed_cells"), TensorLoader(x[:24], y[:24], 12), TensorLoader(x[24:], y[24:], 12))


def test_a_search_whose_alphas_did_not_move_warns(tiny_images, caplog):
    with caplog.at_level(logging.WARNING, logger="nni_visplugin"):
        outcome = _search(tiny_images, arch_lr=1e-9)
    # The alphas start within 1e-3 of each other: the entropy of 3 candidates is all but log 3.
    assert outcome.decision["alpha_entropy"] > 0.999 and not outcome.decision["decided"]
    assert any(UNDECIDED in r.getMessage() for r in caplog.records)


def test_a_search_whose_alphas_moved_far_is_decided(tiny_images, caplog):
    with caplog.at_level(logging.WARNING, logger="nni_visplugin"):
        outcome = _search(tiny_images, arch_lr=0.5, arch_weight_decay=0.0)
    alphas = outcome.history[-1]["alphas"]
    # Written out: the mean over the choices of H(softmax) / log n.
    entropies = []
    for entry in alphas.values():
        p = torch.softmax(torch.tensor(entry["alpha"], dtype=torch.float64), 0)
        entropies.append(float(-(p * p.log()).sum()) / math.log(len(p)))
    expected = sum(entropies) / len(entropies)
    assert outcome.decision["alpha_entropy"] == pytest.approx(expected, rel=1e-5)
    assert outcome.decision["decided"] == (expected < UNDECIDED_ENTROPY)
    assert expected < UNDECIDED_ENTROPY  # the check is not vacuous: this search did decide
    assert not any(UNDECIDED in r.getMessage() for r in caplog.records)


def test_the_report_page_carries_the_warning(tmp_path):
    history = [{"epoch": e, "alphas": {"cell0": {"names": ["a", "b"], "alpha": [0, 0], "softmax": [0.5, 0.5]}},
                "arch": {"cell0": "a"}} for e in range(2)]
    page = write_report(tmp_path, title="t", summary={}, trials=[], history=history, arch={"cell0": "a"}, runs=[],
                        comparison=[], warning=decision(0.97)["warning"]).read_text()
    assert "Warning" in page and UNDECIDED in page
    quiet = write_report(tmp_path / "b", title="t", summary={}, trials=[], history=history, arch={"cell0": "a"},
                         runs=[], comparison=[]).read_text()
    assert UNDECIDED not in quiet
