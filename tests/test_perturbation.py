"""Perturbation-based choice of the edges' operations and of the nodes' inputs (DARTS-PT's operation and
topology selection), against their definitions."""
from __future__ import annotations

import copy

import pytest
import torch

from nni_visplugin import create_space
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.strategies.darts import DartsConfig, DartsStrategy
from nni_visplugin.nas.relax import MixedInput, MixedOp, arch_parameters
from nni_visplugin.nas.derive import derive_architecture, select_by_perturbation

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


def _reference(supernet, batches, edge_order, node_order, operations=True):
    """DARTS-PT's selection written out independently of the code: every mixed operation is replaced
    by a forward hook computing ``sum_k w_k op_k(x)`` from its candidates over the candidates still
    in, or the projected candidate alone; the supernet runs in train mode (batch statistics) and its
    state is put back after every measurement."""
    saved = copy.deepcopy(supernet.state_dict())
    removed: dict[str, int] = {}     # edge label -> candidate taken out for this measurement
    projected: dict[str, int] = {}   # edge label -> the one candidate left
    cut: set[str] = set()            # edge labels whose output is zero

    def hook(mod, args, out):
        x = args[0]
        if mod.label in cut:
            return torch.zeros_like(out)
        if mod.label in projected:
            return mod.candidates[projected[mod.label]](x)
        w = torch.softmax(mod.alpha, -1)
        return sum(w[k] * op(x) for k, op in enumerate(mod.candidates)
                   if not mod.zero[k] and removed.get(mod.label) != k)

    def score():
        out = _score(supernet, batches)
        supernet.load_state_dict(saved)
        return out

    hooks = [m.register_forward_hook(hook) for m in supernet.modules() if isinstance(m, MixedOp)]
    edges = {m.label: m for m in supernet.modules() if isinstance(m, MixedOp)}
    nodes = {m.label: m for m in supernet.modules() if isinstance(m, MixedInput) and m.n_candidates > m.n_chosen}
    sample = derive_architecture(supernet)
    was = supernet.training
    supernet.train()
    scores: dict[str, dict] = {}
    try:
        with torch.no_grad():
            for label in edge_order:
                m = edges[label]
                if operations:
                    scores[label] = {}
                    for i in (k for k in range(len(m.names)) if not m.zero[k]):
                        removed[label] = i
                        scores[label][i] = score()
                    removed.pop(label)
                    best = min(scores[label], key=lambda i: (scores[label][i][0], -scores[label][i][1], i))
                    sample[label] = m.names[best]
                projected[label] = m.names.index(sample[label])
            for label in node_order:
                m = nodes[label]
                scores[label] = {}
                for i in range(m.n_candidates):
                    cut.add(m.edge_labels[i])
                    scores[label][i] = score()
                    cut.discard(m.edge_labels[i])
                ranked = sorted(range(m.n_candidates), key=lambda i: (scores[label][i][0], -scores[label][i][1], i))
                sample[label] = sorted(ranked[: m.n_chosen])
                cut.update(m.edge_labels[i] for i in range(m.n_candidates) if i not in sample[label])
    finally:
        for h in hooks:
            h.remove()
        supernet.train(was)
    return sample, scores


@pytest.mark.parametrize("edge_norm", [False, True])
@pytest.mark.parametrize("operations", [True, False])
def test_operations_then_inputs_are_chosen_by_darts_pt_rule_in_train_mode(edge_norm, operations):
    supernet = _supernet(edge_norm)
    batches = _batches()
    by_alpha = derive_architecture(supernet)
    state = copy.deepcopy(supernet.state_dict())
    supernet.eval()
    with torch.no_grad():
        before = supernet(batches[0][0])
    torch.manual_seed(3)
    sample, trace = select_by_perturbation(supernet, batches, by_alpha, operations=operations, topology=True)
    order = trace["order"]
    edges = sorted({m.label for m in supernet.modules() if isinstance(m, MixedOp)})
    assert sorted(order["edges"]) == edges  # every edge, each once
    assert set(order["nodes"]) == {"normal/input_1", "normal/input_2", "reduce/input_1", "reduce/input_2"}
    expected, scores = _reference(supernet, batches, order["edges"], order["nodes"], operations)

    assert sample == expected
    for label, kept in (trace["nodes"]).items():
        for i, (acc, loss) in scores[label].items():
            assert trace["nodes"][label]["without"][str(i)]["accuracy"] == pytest.approx(acc, abs=1e-12)
            assert trace["nodes"][label]["without"][str(i)]["loss"] == pytest.approx(loss, rel=1e-9)
    if operations:
        m = next(m for m in supernet.modules() if isinstance(m, MixedOp))
        for name, measured in trace["edges"][m.label]["without"].items():
            acc, loss = scores[m.label][m.names.index(name)]
            assert measured["accuracy"] == pytest.approx(acc, abs=1e-12)
            assert measured["loss"] == pytest.approx(loss, rel=1e-9)
    else:
        assert "edges" not in trace and {k: v for k, v in sample.items() if "/op_" in k} == \
            {k: v for k, v in by_alpha.items() if "/op_" in k}
    # The supernet is left as it was: weights, running statistics, no edge taken out or projected.
    after = supernet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert all(not m.dropped for m in supernet.modules() if isinstance(m, MixedInput))
    assert all(m.fixed is None and not m.removed for m in supernet.modules() if isinstance(m, MixedOp))
    with torch.no_grad():
        assert torch.equal(supernet(batches[0][0]), before)


def test_the_edge_order_is_random_and_fixed_by_the_seed():
    supernet = _supernet(False)
    batches = _batches()[:1]
    orders = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        orders.append(select_by_perturbation(supernet, batches, derive_architecture(supernet),
                                             operations=False, topology=False)[1]["order"])
    assert orders[0] == orders[1] and orders[0]["edges"] != orders[2]["edges"]


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
        # Labels: the supernet's own predictions (train mode, as measured), so an edge it needs
        # costs accuracy when removed.
        supernet.train()
        state = copy.deepcopy(supernet.state_dict())
        with torch.no_grad():
            batches = [(x, supernet(x).argmax(1)) for x, _ in _batches()]
        supernet.load_state_dict(state)
        by_alpha = derive_architecture(supernet)
        sample, trace = select_by_perturbation(supernet, batches, by_alpha, operations=False)
    finally:
        for h in hooks:
            h.remove()
    assert 0 not in by_alpha["normal/input_2"]
    assert 0 in sample["normal/input_2"] and len(sample["normal/input_2"]) == 2
    without = trace["nodes"]["normal/input_2"]["without"]
    assert without["0"]["accuracy"] < min(v["accuracy"] for i, v in without.items() if i != "0")


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
        # Every other edge is all but decided, so projecting it first changes nothing that matters.
        for label, a in arch_parameters(supernet).items():
            if label != key and "/op_" in label:
                a[1 + int(a[1:].argmax())] = 30.0
    hooks = [op.register_forward_hook(lambda mod, args, out, keep=(i == conv): 5e4 * out if keep else 0 * out)
             for m in edges for i, op in enumerate(m.candidates)]
    sample = derive_architecture(supernet)
    try:
        # Labels: the supernet's own predictions in train mode (as measured), every edge in.
        supernet.train()
        state = copy.deepcopy(supernet.state_dict())
        with torch.no_grad():
            batches = [(x, supernet(x).argmax(1)) for x, _ in _batches()]
        supernet.load_state_dict(state)
        new, trace = select_by_perturbation(supernet, batches, sample, topology=False)
    finally:
        for h in hooks:
            h.remove()
    assert sample[key] != "sep_conv_3x3" and new[key] == "sep_conv_3x3"
    assert trace["order"]["edges"].index(key) >= 0
    without = trace["edges"][key]["without"]
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
    assert set(record) == {"images", "order", "nodes", "edges", "seconds"}
    edges = {m.label for m in first.supernet.modules() if isinstance(m, MixedOp)}
    assert set(record["edges"]) == edges == set(record["order"]["edges"])  # every edge, operations first
    assert all(first.arch[label] == r["kept"] for label, r in record["edges"].items())
