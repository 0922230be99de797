"""Perturbation-based choice of the nodes' inputs and of the edges' operations (DARTS-PT's topology and
operation selection), against their definitions."""
from __future__ import annotations

import pytest
import torch

from nni_visplugin import create_space
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.strategies.darts import DartsConfig, DartsStrategy
from nni_visplugin.nas.relax import MixedInput, MixedOp, arch_parameters
from nni_visplugin.nas.derive import derive_architecture, select_inputs_by_perturbation, select_ops_by_perturbation

from helpers.spaces import tiny_kwargs  # noqa: E402


def _supernet(edge_norm: bool):
    torch.manual_seed(0)
    space = create_space("darts_cell", **{**tiny_kwargs("darts_cell"), "num_nodes": 3})  # nodes of 2, 3, 4 inputs
    supernet = DartsStrategy(epochs=1, edge_norm=edge_norm).build_supernet(space).to(torch.float64)
    with torch.no_grad():
        for a in arch_parameters(supernet).values():
            a.copy_(torch.randn(a.shape, dtype=torch.float64))
    # Batch-norm statistics of some real forward passes, so eval mode computes something sensible.
    supernet.train()
    with torch.no_grad():
        for _ in range(3):
            supernet(torch.randn(16, 1, 8, 8, dtype=torch.float64))
    return supernet


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(24, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (24,), generator=g))
            for _ in range(2)]


def _score(supernet, batches):
    """Accuracy and mean loss of the supernet on all the batches, computed in one piece."""
    logits = torch.cat([supernet(x) for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    return float((logits.argmax(1) == y).double().mean()), float(torch.nn.functional.cross_entropy(logits, y))


def _reference(supernet, batches):
    """The rule written out independently: an edge is removed by making its mixed operation output
    zeros (forward hooks), and the accuracy and loss are recomputed from scratch."""
    removed_edges: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, args, out: torch.zeros_like(out) if mod.label in removed_edges else out)
             for m in supernet.modules() if isinstance(m, MixedOp)]

    nodes = {}
    for m in supernet.modules():
        if isinstance(m, MixedInput) and m.edge_labels and m.n_candidates > m.n_chosen:
            nodes.setdefault(m.label, m)
    chosen, removals = {}, {}
    supernet.eval()
    try:
        with torch.no_grad():
            for label, m in nodes.items():
                left = list(range(m.n_candidates))
                removals[label] = []
                while len(left) > m.n_chosen:
                    scores = {}
                    for i in left:
                        removed_edges.add(m.edge_labels[i])
                        scores[i] = _score(supernet, batches)
                        removed_edges.discard(m.edge_labels[i])
                    best = max(left, key=lambda i: (scores[i][0], -scores[i][1], i))
                    removals[label].append((best, scores))
                    removed_edges.add(m.edge_labels[best])
                    left.remove(best)
                chosen[label] = left
    finally:
        for h in hooks:
            h.remove()
    return chosen, removals


@pytest.mark.parametrize("edge_norm", [False, True])
def test_inputs_are_chosen_by_the_greedy_removal_rule(edge_norm):
    supernet = _supernet(edge_norm)
    batches = _batches()
    by_alpha = derive_architecture(supernet)
    supernet.eval()
    with torch.no_grad():
        before = supernet(batches[0][0])
    sample, trace = select_inputs_by_perturbation(supernet, batches, by_alpha)
    chosen, removals = _reference(supernet, batches)

    assert set(trace) == set(chosen) == {"normal/input_1", "normal/input_2", "reduce/input_1", "reduce/input_2"}
    for label, inputs in chosen.items():
        assert sample[label] == inputs
        assert [r["removed"] for r in trace[label]] == [i for i, _ in removals[label]]
        for measured, (_, expected) in zip(trace[label], removals[label]):
            for i, (acc, loss) in expected.items():
                assert measured["without"][str(i)]["accuracy"] == pytest.approx(acc, abs=1e-12)
                assert measured["without"][str(i)]["loss"] == pytest.approx(loss, rel=1e-9)
    # The operations are alpha's, the nodes with nothing to choose keep theirs, the supernet is intact.
    assert {k: v for k, v in sample.items() if "/op_" in k} == {k: v for k, v in by_alpha.items() if "/op_" in k}
    assert sample["normal/input_0"] == by_alpha["normal/input_0"] == [0, 1]
    assert all(not m.dropped for m in supernet.modules() if isinstance(m, MixedInput))
    with torch.no_grad():
        assert torch.equal(supernet(batches[0][0]), before)


def test_an_edge_the_prediction_rests_on_is_kept_where_alpha_drops_it():
    """The case the rule exists for: an edge whose operations all weigh the same (so DARTS's rule,
    which ranks edges by their strongest operation's weight, drops it) but whose output decides
    the prediction."""
    supernet = _supernet(edge_norm=False)
    key = "normal/op_2_0"  # an incoming edge of node 2 (4 candidate inputs, 2 kept)
    with torch.no_grad():
        arch_parameters(supernet)[key].zero_()  # uniform: the weakest edge for DARTS's rule
    hooks = [m.register_forward_hook(lambda mod, args, out: 50 * out)
             for m in supernet.modules() if isinstance(m, MixedOp) and m.label == key]
    try:
        # Labels: the supernet's own predictions, so an edge it needs costs accuracy when removed.
        supernet.eval()
        with torch.no_grad():
            batches = [(x, supernet(x).argmax(1)) for x, _ in _batches()]
        by_alpha = derive_architecture(supernet)
        sample, trace = select_inputs_by_perturbation(supernet, batches, by_alpha)
    finally:
        for h in hooks:
            h.remove()
    assert 0 not in by_alpha["normal/input_2"]
    assert 0 in sample["normal/input_2"] and len(sample["normal/input_2"]) == 2
    rounds = trace["normal/input_2"]
    assert all(r["without"]["0"]["accuracy"] < min(v["accuracy"] for i, v in r["without"].items() if i != "0")
               for r in rounds)


def test_search_with_perturbation_topology_is_recorded_and_reproducible(tiny_images):
    x, y = tiny_images

    def search():
        torch.manual_seed(0)
        space = create_space("darts_cell", **{**tiny_kwargs("darts_cell"), "num_nodes": 3})
        strategy = DartsStrategy(epochs=2, topology="perturbation", perturbation_images=40)
        loader = TensorLoader(x, y, batch_size=16, shuffle=True, seed=0)
        return strategy.search(space, loader, TensorLoader(x, y, batch_size=16, shuffle=True, seed=1))

    first, second = search(), search()
    assert first.arch == second.arch
    record = first.history[-1]
    assert record["arch"] == first.arch and record["perturbation"]["images"] >= 40
    assert set(record["perturbation"]["nodes"]) == {"normal/input_1", "normal/input_2", "reduce/input_1",
                                                    "reduce/input_2"}
    assert all(len(first.arch[f"{c}/input_{i}"]) == 2 for c in ("normal", "reduce") for i in range(3))


@pytest.mark.parametrize("bad, message", [({"topology": "random"}, "topology must be alpha or perturbation"),
                                          ({"operations": "size"}, "operations must be alpha or perturbation"),
                                          ({"perturbation_images": 0}, "perturbation_images must be an integer >= 1")])
def test_bad_topology_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        DartsConfig(**bad)


def _reference_ops(supernet, batches, sample):
    """The operation rule written out independently: the edges the sample leaves out and the
    candidate being tried are removed by forward hooks that output zeros."""
    kept = set()
    for m in supernet.modules():
        if isinstance(m, MixedInput) and m.edge_labels:
            kept.update(e for i, e in enumerate(m.edge_labels) if i in sample[m.label])
    trying: dict[str, int] = {}
    hooks = []
    for m in supernet.modules():
        if isinstance(m, MixedOp):
            hooks.append(m.register_forward_hook(
                lambda mod, args, out: out if mod.label in kept else torch.zeros_like(out)))
            for i, op in enumerate(m.candidates):
                hooks.append(op.register_forward_hook(
                    lambda mod, args, out, label=m.label, i=i: torch.zeros_like(out) if trying.get(label) == i else out))

    chosen, measured = {}, {}
    supernet.eval()
    try:
        with torch.no_grad():
            for label in sorted(kept):
                edge = next(m for m in supernet.modules() if isinstance(m, MixedOp) and m.label == label)
                scores = {}
                for i, name in enumerate(edge.names):
                    if not edge.zero[i]:
                        trying[label] = i
                        scores[name] = _score(supernet, batches)
                trying.clear()
                measured[label] = scores
                chosen[label] = min(scores, key=lambda n: (scores[n][0], -scores[n][1], edge.names.index(n)))
    finally:
        for h in hooks:
            h.remove()
    return chosen, measured


@pytest.mark.parametrize("edge_norm", [False, True])
def test_operations_are_chosen_by_the_removal_rule(edge_norm):
    supernet = _supernet(edge_norm)
    batches = _batches()
    sample, _ = select_inputs_by_perturbation(supernet, batches, derive_architecture(supernet))
    supernet.eval()
    with torch.no_grad():
        before = supernet(batches[0][0])
    new, trace = select_ops_by_perturbation(supernet, batches, sample)
    chosen, measured = _reference_ops(supernet, batches, sample)

    assert set(trace) == set(chosen) and len(chosen) == 2 * (2 + 2 + 2)  # two kept edges per node, 2 cells
    for label, name in chosen.items():
        assert new[label] == name == trace[label]["kept"]
        for op, (acc, loss) in measured[label].items():
            assert trace[label]["without"][op]["accuracy"] == pytest.approx(acc, abs=1e-12)
            assert trace[label]["without"][op]["loss"] == pytest.approx(loss, rel=1e-9)
    # Edges left out keep alpha's operation (they are not in the network); inputs are untouched;
    # the supernet is intact afterwards.
    assert {k: v for k, v in new.items() if "/input_" in k} == {k: v for k, v in sample.items() if "/input_" in k}
    assert all(new[k] == sample[k] for k in new if "/op_" in k and k not in chosen)
    assert all(not m.removed for m in supernet.modules() if isinstance(m, MixedOp))
    assert all(not m.dropped for m in supernet.modules() if isinstance(m, MixedInput))
    with torch.no_grad():
        assert torch.equal(supernet(batches[0][0]), before)


def test_an_operation_the_prediction_rests_on_is_kept_where_alpha_drops_it():
    """The case DARTS-PT's rule exists for: the candidate with the smallest alpha is the only one on
    its edge with an output, and the prediction rests on it, so it is the one the supernet cannot do
    without."""
    supernet = _supernet(edge_norm=False)
    key = "normal/op_1_0"  # an edge of node 1, kept below
    edges = [m for m in supernet.modules() if isinstance(m, MixedOp) and m.label == key]
    conv = edges[0].names.index("sep_conv_3x3")
    with torch.no_grad():
        alpha = arch_parameters(supernet)[key]
        alpha.copy_(torch.ones_like(alpha))
        alpha[conv] = -1.0  # the weakest candidate by alpha
    hooks = [op.register_forward_hook(lambda mod, args, out, keep=(i == conv): 5e4 * out if keep else 0 * out)
             for m in edges for i, op in enumerate(m.candidates)]
    sample = derive_architecture(supernet)
    sample["normal/input_1"] = [0, 1]
    inputs = [m for m in supernet.modules() if isinstance(m, MixedInput) and m.edge_labels]
    try:
        # Labels: the supernet's own predictions, with the edges the sample leaves out taken out
        # (as they are while the operations are measured).
        supernet.eval()
        for m in inputs:
            m.dropped = frozenset(range(m.n_candidates)) - set(sample[m.label])
        with torch.no_grad():
            batches = [(x, supernet(x).argmax(1)) for x, _ in _batches()]
        for m in inputs:
            m.dropped = frozenset()
        new, trace = select_ops_by_perturbation(supernet, batches, sample)
    finally:
        for h in hooks:
            h.remove()
    assert sample[key] != "sep_conv_3x3" and new[key] == "sep_conv_3x3"
    without = trace[key]["without"]
    assert without["sep_conv_3x3"]["accuracy"] < 1.0
    assert all(v["accuracy"] == 1.0 for n, v in without.items() if n != "sep_conv_3x3")


def test_search_with_perturbation_operations_is_recorded_and_reproducible(tiny_images):
    x, y = tiny_images

    def search():
        torch.manual_seed(0)
        space = create_space("darts_cell", **{**tiny_kwargs("darts_cell"), "num_nodes": 3})
        strategy = DartsStrategy(epochs=2, topology="perturbation", operations="perturbation", perturbation_images=40)
        loader = TensorLoader(x, y, batch_size=16, shuffle=True, seed=0)
        return strategy.search(space, loader, TensorLoader(x, y, batch_size=16, shuffle=True, seed=1))

    first, second = search(), search()
    assert first.arch == second.arch
    record = first.history[-1]["perturbation"]
    assert set(record) == {"images", "nodes", "edges", "seconds"}
    kept = {m.edge_labels[i] for m in first.supernet.modules() if isinstance(m, MixedInput) and m.edge_labels
            for i in first.arch[m.label]}
    assert set(record["edges"]) == kept
    assert all(first.arch[label] == r["kept"] for label, r in record["edges"].items())
