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


def test_a_derived_architecture_of_parameter_free_operations_is_collapsed():
    """Counted by hand on nb201_cell: conv_1x1 and conv_3x3 have weights, none, skip_connect and
    avg_pool_3x3 do not, and every edge is kept (no node chooses its inputs there)."""
    from nni_visplugin.nas.health import COLLAPSED, learnable_kept

    supernet = DartsStrategy(epochs=1).build_supernet(tiny_space("nb201_cell"))
    labels = ["edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2"]
    pooled = dict(zip(labels, ["none", "avg_pool_3x3", "skip_connect", "avg_pool_3x3", "none", "none"]))
    assert learnable_kept(supernet, pooled) == (0, 6)
    mixed = {**pooled, "edge_2_1": "conv_1x1", "edge_3_2": "conv_3x3"}
    assert learnable_kept(supernet, mixed) == (2, 6)
    collapsed = decision(0.5, learnable=(0, 6))
    assert collapsed["decided"] and collapsed["collapsed"] and COLLAPSED in collapsed["warning"]
    assert UNDECIDED not in collapsed["warning"]
    both = decision(0.99, learnable=(0, 6))
    assert UNDECIDED in both["warning"] and COLLAPSED in both["warning"]
    assert decision(0.5, learnable=(2, 6))["warning"] is None
    assert not decision(0.5, learnable=(0, 0))["collapsed"]  # nothing with weights to keep: no collapse


def test_only_the_edges_a_node_keeps_count(tiny_images):
    """darts_cell: an edge its node did not choose is not part of the architecture, whatever its operation."""
    from nni_visplugin.nas.health import learnable_kept
    from nni_visplugin.nas.relax import input_choices, op_choices

    supernet = DartsStrategy(epochs=1).build_supernet(tiny_space("darts_cell"))
    ops, nodes = op_choices(supernet), input_choices(supernet)
    # Pooling has no weights at any stride (a skip connection on a stride-2 edge is a factorised
    # reduction, with weights).
    arch = {label: "max_pool_3x3" for label in ops}
    for label, m in nodes.items():
        arch[label] = [0]
        arch[m.edge_labels[1]] = "conv_3x3"  # on an edge no node keeps
    assert learnable_kept(supernet, arch)[0] == 0
    kept_edge = next(iter(nodes.values())).edge_labels[0]
    assert learnable_kept(supernet, {**arch, kept_edge: "sep_conv_3x3"})[0] == 1
