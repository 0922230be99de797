"""The search-quality benchmark's rules: Kendall's tau-b, the percentile, resuming a table, one recipe per folder."""
from __future__ import annotations

import argparse
import importlib.util
import json
import random

import pytest
from scipy.stats import kendalltau

from helpers.nni import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("search_quality", REPO / "benchmarks" / "search_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kendall_tau_is_tau_b_with_ties(bench):
    rng = random.Random(0)
    for _ in range(20):
        a = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(15)]
        b = [x + rng.choice([-0.1, 0.0, 0.1]) for x in a]
        assert bench.kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic, abs=1e-12)


def test_percentile_counts_the_table_below_and_half_the_ties(bench):
    table = [0.1, 0.5, 0.5, 0.7, 0.9]
    assert bench.percentile(0.5, table) == pytest.approx(100 * (1 + 0.5 * 2) / 5)
    assert bench.percentile(0.95, table) == 100.0 and bench.percentile(0.0, table) == 0.0


def test_a_table_resumes_after_an_interruption_and_refuses_another_recipe(bench, tmp_path, monkeypatch):
    trained = []

    def fake_train(arch, seed, data, epochs=None):
        trained.append((bench.arch_key(arch), seed))
        return {"val_accuracy": 0.5, "cpu_seconds": 0.0, "params": 1}

    monkeypatch.setattr(bench, "train_standalone", fake_train)
    monkeypatch.setattr(bench, "load_data", lambda: {})
    monkeypatch.setitem(bench.TABLE, "size", 3)
    args = argparse.Namespace(out=tmp_path, shard="0/1")
    bench.check_recipe(tmp_path)
    keys = [bench.arch_key(a) for a in bench.sample_archs(3, bench.TABLE["arch_seed"])]
    # An interrupted run left the first two trainings on record.
    with (tmp_path / "table-0of1.jsonl").open("w") as f:
        for key, seed in [(keys[0], 0), (keys[0], 1)]:
            f.write(json.dumps({"arch": key, "seed": seed, "val_accuracy": 0.4}) + "\n")
    bench.cmd_table(args)
    assert trained == [(k, s) for k in keys[1:] for s in bench.TABLE["seeds"]]
    trained.clear()
    bench.cmd_table(args)
    assert trained == []  # everything on record: nothing trained again

    monkeypatch.setitem(bench.RECIPE, "epochs", bench.RECIPE["epochs"] + 1)
    with pytest.raises(SystemExit, match="another recipe"):
        bench.check_recipe(tmp_path)
