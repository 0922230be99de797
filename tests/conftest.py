"""Shared fixtures: tiny data, a runner for real NNI experiments on loopback, and the test's markers.

Markers (pytest.ini): ``integration`` for tests that start real parts (NNI managers, servers, a
browser, command-line subprocesses, searches of many seconds); everything else is a unit test:
``python -m pytest -m "not integration"`` runs those alone.

System packages: tests that need one (Chromium, PostgreSQL, Debian's Fashion-MNIST files, the
iproute2 and util-linux tools for a private network namespace) are listed in ``SYSTEM_NEEDS``.
Where one is missing the run says so once, in its header, with the ``apt-get install`` line, and
only those tests skip, naming it. Under CI (``CI=true``) a missing one stops the run instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers.nni import FASHION_MNIST_DIR, netns_available, run_experiment, shipped_config, tiny_config


@pytest.fixture(scope="session")
def darts_experiment(tmp_path_factory):
    """The shipped experiments/darts.yml, shrunk to 4 short trials, run once for the whole session;
    where Chromium is installed its web UI is browsed (and clicked through) before it is stopped."""
    import shutil

    tmp = tmp_path_factory.mktemp("nni")
    browse = tmp / "browse" if (shutil.which("chromium") or shutil.which("chromium-browser")) else None
    report = run_experiment(tmp, tiny_config(shipped_config(), trials=4), timeout=420, browse_dir=browse)
    report["browse_dir"] = str(browse) if browse else None
    return report


@pytest.fixture
def tiny_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g, dtype=torch.float32)
    y = torch.arange(48) % 3
    x[:, 0, :3, :3] += y.view(-1, 1, 1).float()  # a learnable signal
    return x, y


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Latency tables and other caches go to a temporary directory, not the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


# ------------------------------------------------------------------ system packages and markers
def _has_postgres() -> bool:
    import glob

    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _has_chromium() -> bool:
    import shutil

    return bool(shutil.which("chromium") or shutil.which("chromium-browser"))


# Debian package -> (is it there, the tests that need it: module names, or module::name prefixes).
SYSTEM_NEEDS = {
    "chromium": (_has_chromium, ("test_webui",)),
    "postgresql": (_has_postgres, ("test_outer_loop::test_two_experiments_share_one_postgresql",
                                   "test_outer_loop::test_tuners_starting_together_on_an_empty_postgresql")),
    "dataset-fashion-mnist": (FASHION_MNIST_DIR.is_dir, ("test_data::test_real_fashion_mnist",
                                                        "test_pipeline::test_shipped", "test_pipeline::test_gpu",
                                                        "test_pipeline::test_check_reads")),
    # A private network namespace for every NNI manager, whose REST server listens on every interface.
    "iproute2": (netns_available, ("test_nni_integration", "test_faults", "test_outer_loop", "test_webui",
                                    "test_pipeline::test_pipeline_end_to_end", "test_pipeline::test_seeds_side")),
}

# Tests of real parts, or of several seconds each: left out by -m "not integration".
INTEGRATION = ("test_nni_integration", "test_faults", "test_outer_loop", "test_webui", "test_pipeline",
               "test_search_cli", "test_studies", "test_checkpoint::test_search_killed", "test_registry::test_other",
               "test_registry::test_entry_point", "test_check::test_cli", "test_export::test_cli",
               "test_retrain::test_cli", "test_retrain::test_a_checkpoint_of_another", "test_retrain::test_retrain_after",
               "test_tuner::test_sqlite_study_locked", "test_perturbation::test_search_with",
               "test_perturbation::test_operations_then_inputs", "test_darts::test_second_order_gradient",
               "test_baselines::test_baselines_in_two", "test_baselines::test_hand_matched",
               # whole experiment configs through NNI's config classes, the tuner and every space they name
               "test_check::test_each", "test_check::test_shipped", "test_check::test_in_channels_that_match",
               "test_check::test_checking_nni", "test_check::test_nni_",
               # subprocesses, and supernets measured or trained for several seconds each
               "test_contract::test_the_search_path", "test_contract::test_a_search_as",
               "test_perturbation::test_an_operation", "test_perturbation::test_an_edge",
               "test_export::test_onnx_matches", "test_proxyless::test_table_")


def _missing() -> dict[str, tuple[str, ...]]:
    if not hasattr(_missing, "cache"):
        _missing.cache = {name: needs for name, (present, needs) in SYSTEM_NEEDS.items() if not present()}
    return _missing.cache


def _matches(item, patterns) -> bool:
    module = Path(str(item.fspath)).stem
    return any(p == module or f"{module}::{item.name}".startswith(p) for p in patterns)


def pytest_report_header(config):
    missing = _missing()
    if not missing:
        return "system packages: all present"
    return (f"system packages missing: {', '.join(missing)}; the tests that need them are skipped. "
            f"Install: apt-get install {' '.join(missing)}")


def pytest_sessionstart(session):
    if os.environ.get("CI") and _missing():
        pytest.exit(f"CI needs every system package the tests use; missing: {', '.join(_missing())} "
                    f"(apt-get install {' '.join(_missing())})", returncode=3)


def pytest_collection_modifyitems(config, items):
    missing = _missing()
    for item in items:
        item.add_marker(pytest.mark.integration if _matches(item, INTEGRATION) else pytest.mark.unit)
        for package, needs in missing.items():
            if _matches(item, needs):
                item.add_marker(pytest.mark.skip(reason=f"needs the system package {package}: "
                                                        f"apt-get install {package}"))
