"""ProxylessNAS against its definition (Cai, Zhu, Han, ICLR 2019), and the latency lookup tables."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_visplugin import create_strategy
from nni_visplugin.data.loader import TensorLoader
from nni_visplugin.nas.latency import TableMismatch, load_or_measure, measure_model
from nni_visplugin.nas.fixed import build_fixed_model
from nni_visplugin.nas.strategies.base import BilevelState, split_params
from nni_visplugin.nas.strategies.proxyless import BinaryGateOp, PathSampler, ProxylessStrategy

from helpers.spaces import tiny_kwargs, tiny_space


def _supernet(space="proxyless_mobile", **cfg):
    torch.manual_seed(0)
    strategy = ProxylessStrategy(epochs=1, **cfg)
    return strategy, strategy.build_supernet(tiny_space(space))


def _count_calls(supernet):
    """Forward calls per (label, candidate index), through hooks on every candidate."""
    calls: dict[tuple[str, int], int] = {}
    for m in supernet.modules():
        if isinstance(m, BinaryGateOp):
            for k, op in enumerate(m.candidates):
                op.register_forward_hook(lambda mod, a, o, key=(m.label, k): calls.__setitem__(key, calls.get(key, 0) + 1))
    return calls


@pytest.mark.parametrize("space", ["proxyless_mobile", "darts_cell"])
def test_only_sampled_paths_run(space):
    strategy, supernet = _supernet(space)
    calls = _count_calls(supernet)
    x = torch.randn(4, 1, 8, 8)
    ops, inputs = strategy.gated_modules(supernet)
    for mode, per_choice in (("weight", 1), ("arch", 2)):
        calls.clear()
        strategy.resample(supernet, mode)
        supernet(x).sum().backward()
        for label, m in ops.items():
            ran = {k for (lab, k) in calls if lab == label}
            if not strategy.sampler.edge_active(label):
                assert ran == set(), label  # an edge its node did not draw is never computed
                continue
            sample = strategy.sampler.ops[label]
            expected = {sample} if mode == "weight" else {sample[0], sample[1]}
            assert ran == expected and len(ran) == per_choice, (label, ran, sample)
    if space == "darts_cell":
        # per node, exactly n_chosen of its edges ran
        for label, m in inputs.items():
            assert len(strategy.sampler.inputs[label]) == m.n_chosen


def test_arch_gradient_is_the_papers_binary_gate_estimator():
    """dL/dalpha_i = sum_{j in {a,b}} dL/dg_j * p'_j (delta_ij - p'_i), p' = softmax over the two sampled
    paths, dL/dg_j = <dL/dout, o_j>; zero for the paths not sampled."""
    torch.manual_seed(1)
    ops = [nn.Linear(3, 3) for _ in range(4)]
    alpha = nn.Parameter(torch.randn(4))
    sampler = PathSampler()
    gate = BinaryGateOp("c", list(range(4)), ops, alpha, sampler)
    x = torch.randn(5, 3)
    target = torch.randn(5, 3)
    for i, j, active in ((0, 2, 0), (3, 1, 1)):
        sampler.mode, sampler.ops["c"] = "arch", (i, j, active)
        out = gate(x)
        loss = ((out - target) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, alpha)
        # by hand
        o = {k: ops[k](x).detach() for k in (i, j)}
        assert torch.allclose(out, o[(i, j)[active]])  # the forward value is the active path
        dl_dout = 2 * (o[(i, j)[active]] - target)
        dl_dg = {k: (dl_dout * o[k]).sum() for k in (i, j)}
        p = F.softmax(alpha.detach()[[i, j]], 0)
        pp = {i: p[0], j: p[1]}
        expected = torch.zeros(4)
        for a in (i, j):
            expected[a] = sum(dl_dg[b] * pp[b] * ((1.0 if a == b else 0.0) - pp[a]) for b in (i, j))
        assert torch.allclose(grad, expected, atol=1e-5), (grad, expected)
        assert grad[[k for k in range(4) if k not in (i, j)]].abs().max() == 0


def test_arch_step_keeps_the_sampled_pair_mass_and_leaves_other_paths():
    strategy, supernet = _supernet()
    names, weights, alphas = split_params(supernet)
    with torch.no_grad():
        for a in alphas:
            a.normal_()
    cfg = strategy.config
    a_opt = torch.optim.Adam(alphas, lr=0.1, betas=(cfg.arch_beta1, cfg.arch_beta2))
    ops, _ = strategy.gated_modules(supernet)
    before = {label: m.alpha.detach().clone() for label, m in ops.items()}
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,)))
    strategy.arch_step(BilevelState(supernet, names, weights, alphas, a_opt=a_opt, lr=0.1), batch, batch, "t")
    moved = 0
    for label, m in ops.items():
        i, j, _ = strategy.sampler.ops[label]
        after = m.alpha.detach()
        others = [k for k in range(len(m.names)) if k not in (i, j)]
        assert torch.allclose(after[others], before[label][others])  # unsampled paths unchanged
        assert torch.allclose(torch.logsumexp(after[[i, j]], 0), torch.logsumexp(before[label][[i, j]], 0), atol=1e-6)
        moved += int(not torch.allclose(after, before[label]))
    assert moved > 0


def _table(tmp_path, space="proxyless_mobile", **kw):
    path = tmp_path / f"{space}.json"
    return path, load_or_measure(path, space, tiny_kwargs(space), "cpu", 1, **kw)


def test_table_predicts_the_sum_of_chosen_operations_and_gates_unchosen_edges(tmp_path):
    _, table = _table(tmp_path, "darts_cell")
    space = tiny_space("darts_cell")
    memo: dict = {}
    space.random(memo=memo)
    ops = 0.0
    for e in table.entries:
        input_label, index = e["gate"]
        if index in memo[input_label]:
            ops += e["ms"][memo[e["label"]]]
    assert table.predict(memo) == pytest.approx(table.fixed_ms + table.scale * ops)
    assert 0.5 <= table.scale <= 2.0 and table.fixed_ms >= 0
    # every entry was measured at the shape its LayerChoice sees, every real op takes time
    assert all(len(e["shape"]) == 3 for e in table.entries)
    assert all(ms > 0 for e in table.entries for name, ms in e["ms"].items() if name != "none")
    assert all(e["ms"]["none"] == 0 for e in table.entries)


def test_table_is_reused_when_it_matches_and_rebuilt_when_not(tmp_path, monkeypatch):
    path, table = _table(tmp_path)
    import nni_visplugin.nas.latency as latency

    measured = []
    real = latency.measure_table
    monkeypatch.setattr(latency, "measure_table", lambda *a, **k: measured.append(a) or real(*a, **k))

    load_or_measure(path, "proxyless_mobile", tiny_kwargs("proxyless_mobile"), "cpu", 1)
    assert measured == []  # same device, threads, torch, shapes: reused

    data = json.loads(path.read_text())
    data["meta"]["threads"] += 7
    path.write_text(json.dumps(data))
    load_or_measure(path, "proxyless_mobile", tiny_kwargs("proxyless_mobile"), "cpu", 1)
    assert len(measured) == 1  # other thread count: rebuilt
    assert json.loads(path.read_text())["meta"]["threads"] == torch.get_num_threads()

    other_shape = tiny_kwargs("proxyless_mobile", image_size=16)
    load_or_measure(path, "proxyless_mobile", other_shape, "cpu", 1)
    assert len(measured) == 2  # other shapes: rebuilt

    data = json.loads(path.read_text())
    data["meta"]["device_name"] = "Some Phone SoC"
    path.write_text(json.dumps(data))
    kept = load_or_measure(path, "proxyless_mobile", other_shape, "cpu", 1, rebuild="never")
    assert len(measured) == 2 and kept.meta["device_name"] == "Some Phone SoC"  # searching for another device
    with pytest.raises(TableMismatch, match="space"):
        load_or_measure(path, "proxyless_mobile", tiny_kwargs("proxyless_mobile"), "cpu", 1, rebuild="never")


def test_predicted_and_measured_latency_are_reported_for_derived_networks(tmp_path):
    """The error between the table's prediction and an end-to-end measurement, on a few networks."""
    _, table = _table(tmp_path)
    space = tiny_space("proxyless_mobile")
    errors = []
    for seed in range(3):
        memo: dict = {}
        space.random(memo=memo, random_state=__import__("numpy").random.RandomState(100 + seed))
        measured = measure_model(build_fixed_model("proxyless_mobile", tiny_kwargs("proxyless_mobile"), memo),
                                 (1, 8, 8), "cpu", 1)
        predicted = table.predict(memo)
        assert predicted > 0 and measured > 0
        errors.append(abs(predicted - measured) / measured)
    assert all(e == e and e < 10 for e in errors)  # finite and of the right order of magnitude


def test_expected_latency_is_differentiable_and_pulls_towards_fast_operations(tmp_path):
    strategy, supernet = _supernet(latency_loss="add", latency_lambda=1.0, latency_target_ms=1.0,
                                   latency_table=str(tmp_path / "t.json"))
    strategy.prepare(tiny_space("proxyless_mobile"), supernet, "cpu")
    ops, _ = strategy.gated_modules(supernet)
    expected = strategy.expected_latency(supernet)
    grads = torch.autograd.grad(expected, [m.alpha for m in ops.values()])
    for (label, m), g in zip(ops.items(), grads):
        entry = next(e for e in strategy.latency_table.entries if e["label"] == label)
        ms = torch.tensor([entry["ms"][n] for n in m.names])
        p = F.softmax(m.alpha.detach(), 0)
        # d E[lat] / d alpha_i = scale * p_i (lat_i - E_label[lat])
        scale = strategy.latency_table.scale
        assert torch.allclose(g, scale * p * (ms - (p * ms).sum()), atol=1e-6)


@pytest.mark.parametrize("form", ["mul", "add"])
def test_latency_forms_are_the_references(form):
    """ProxylessNAS's two forms with target T: ``loss * (log E / log T) ** beta`` and
    ``loss + lambda * (E - T) / T``, values and their derivative in E written out by hand."""
    import math

    strategy, supernet = _supernet(latency_loss=form, latency_target_ms=2.0, latency_beta=0.6, latency_lambda=0.3)
    for e_ms in (3.0, 1.5):
        latency = torch.tensor(e_ms, dtype=torch.float64, requires_grad=True)
        strategy.expected_latency = lambda net, latency=latency: latency
        loss = torch.tensor(2.0, dtype=torch.float64)
        term = strategy.latency_term(loss, supernet)
        (d_e,) = torch.autograd.grad(term, latency)
        if form == "mul":
            ratio = math.log(e_ms) / math.log(2.0)
            value, slope = 2.0 * ratio ** 0.6, 2.0 * 0.6 * ratio ** -0.4 / (e_ms * math.log(2.0))
        else:
            value, slope = 2.0 + 0.3 * (e_ms - 2.0) / 2.0, 0.3 / 2.0
        assert term.item() == pytest.approx(value, rel=1e-12)
        assert d_e.item() == pytest.approx(slope, rel=1e-9)


def test_latency_settings_are_refused_where_the_form_is_undefined():
    with pytest.raises(ValueError, match="latency_target_ms"):
        create_strategy("proxyless", latency_loss="mul")
    with pytest.raises(ValueError, match="latency_target_ms > 1"):
        create_strategy("proxyless", latency_loss="mul", latency_target_ms=0.8)
    with pytest.raises(ValueError, match="latency_target_ms"):
        create_strategy("proxyless", latency_loss="add")
    with pytest.raises(ValueError, match="latency_loss"):
        create_strategy("proxyless", latency_loss="max")


def test_a_choice_whose_active_path_is_none_keeps_its_alpha(tiny_images):
    """The reference skips the update of a block whose sampled active path is the zero operation."""
    x, y = tiny_images
    strategy, supernet = _supernet("darts_cell")
    names, weights, alphas = split_params(supernet)
    state = strategy.new_state(supernet)
    ops, _ = strategy.gated_modules(supernet)
    label = next(lb for lb, m in ops.items() if any(m.zero))
    m = ops[label]
    zero, other = m.zero.index(True), m.zero.index(False)
    original = strategy.resample

    def forced(net, mode):
        original(net, mode)
        if mode == "arch":
            for lb, mod in ops.items():  # every choice: the zero path active where it has one
                z = mod.zero.index(True) if any(mod.zero) else 0
                o = next(k for k in range(len(mod.names)) if k != z)
                strategy.sampler.ops[lb] = (z, o, 0) if lb == label else (o, z, 0)

    strategy.resample = forced
    before = {lb: mod.alpha.detach().clone() for lb, mod in ops.items()}
    strategy.arch_step(state, (x[:8], y[:8]), (x[8:16], y[8:16]), "test")
    assert torch.equal(m.alpha.detach(), before[label])
    moved = [lb for lb, mod in ops.items() if lb != label and not torch.equal(mod.alpha.detach(), before[lb])]
    assert moved  # the others, active on a real operation, were updated
    assert zero != other


def test_health_monitor_reads_the_gates(tiny_images):
    """alpha_entropy and normal_skips are those of the gates' alphas, computed here by hand."""
    import math

    from nni_visplugin.nas.health import alpha_entropy, count_skips

    strategy, supernet = _supernet("darts_cell")
    ops, inputs = strategy.gated_modules(supernet)
    assert alpha_entropy(supernet) == pytest.approx(1.0)  # uniform at the start
    with torch.no_grad():
        for m in ops.values():
            m.alpha.copy_(torch.arange(len(m.names), dtype=m.alpha.dtype))
            m.alpha[m.names.index("skip_connect")] = len(m.names) + 1.0
    expected = []
    for m in ops.values():
        p = torch.softmax(m.alpha.detach().double(), 0)
        expected.append(float(-(p * p.log()).sum()) / math.log(len(p)))
    assert alpha_entropy(supernet) == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    arch = strategy.derive(supernet)
    kept = sum(len(arch[lb]) for lb in inputs if lb.startswith("normal/"))
    assert kept > 0 and count_skips(supernet, arch) == kept  # every kept normal-cell edge is a skip


def test_latency_loss_moves_the_derived_network_under_the_target(tmp_path, tiny_images):
    """With nothing to learn but latency, the latency loss drives the derived network's
    predicted latency under the target; without it, nothing pulls it there."""
    from nni_visplugin import create_space

    x, y = tiny_images
    y = torch.zeros_like(y)  # a constant label: accuracy gives no reason to prefer any operation
    loaders = (TensorLoader(x[:24], y[:24], 8), TensorLoader(x[24:], y[24:], 8), TensorLoader(x, y, 48))
    kwargs = {**tiny_kwargs("proxyless_mobile"), "widths": [8, 16], "depths": [2, 3]}
    table_path = str(tmp_path / "t.json")
    table = load_or_measure(table_path, "proxyless_mobile", kwargs, "cpu", 1)
    fastest = table.fixed_ms + table.scale * sum(min(e["ms"].values()) for e in table.entries)
    slowest = table.fixed_ms + table.scale * sum(max(e["ms"].values()) for e in table.entries)
    target = fastest + 0.15 * (slowest - fastest)
    results = {}
    for loss in ("none", "add"):
        torch.manual_seed(0)
        strategy = create_strategy("proxyless", epochs=8, arch_lr=0.2, latency_loss=loss, latency_target_ms=target,
                                   latency_lambda=5.0, latency_table=table_path, latency_rebuild="never")
        outcome = strategy.search(create_space("proxyless_mobile", **kwargs), *loaders)
        results[loss] = table.predict(outcome.arch)
    assert results["add"] <= target < results["none"], (results, target, fastest, slowest)
