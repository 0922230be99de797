"""The trial's command line (``python -m nni_visplugin.trial ...``), read by the trial and by ``check``."""
from __future__ import annotations

import argparse
from typing import Any

from nni_visplugin.config.search import parse_assignments

__all__ = ["TRIAL_MODULE", "build_parser", "fixed_overrides"]

TRIAL_MODULE = "nni_visplugin.trial"


def build_parser(prog: str = "python -m nni_visplugin.trial") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run one search as an NNI trial.")
    p.add_argument("--space", default=None, help="search space name (default: darts_cell)")
    p.add_argument("--strategy", default=None, help="strategy name (default: darts)")
    p.add_argument("--dataset", default=None, help="dataset name (default: digits)")
    p.add_argument("--data-dir", default=None, help="dataset directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed setting; repeatable")
    p.add_argument("--out", default=None, help="output directory (default: $NNI_OUTPUT_DIR)")
    return p


def fixed_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = parse_assignments(args.set)
    for key in ("space", "strategy", "dataset", "data_dir"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return overrides
