"""``nni-visplugin``: list what is registered, run a search by hand, find an experiment's best trial."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from nni_visplugin import _compat  # noqa: F401

DEFAULT_EXPERIMENT_ROOT = Path("~/nni-experiments")


def _cmd_list(args: argparse.Namespace) -> int:
    from nni_visplugin import list_spaces, list_strategies
    from nni_visplugin.data import DATASETS

    print("spaces:     " + " ".join(list_spaces()))
    print("strategies: " + " ".join(list_strategies()))
    print("datasets:   " + " ".join(DATASETS))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from nni_visplugin.config import SearchConfig
    from nni_visplugin.search import run_search
    from nni_visplugin.trial import fixed_overrides

    overrides = fixed_overrides(args)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = SearchConfig.create(overrides)
    result = run_search(config, args.out)
    print(json.dumps({k: result[k] for k in ("val_accuracy", "supernet_val_accuracy", "num_params", "wall_seconds")}))
    print(f"architecture: {Path(args.out) / 'arch.json'}")
    return 0


def _trial_results(experiment: str, root: Path) -> tuple[Path, list[dict[str, Any]]]:
    exp_dir = Path(experiment).expanduser()
    if not (exp_dir / "trials").is_dir():
        exp_dir = root.expanduser() / experiment
    trials_dir = exp_dir / "trials"
    if not trials_dir.is_dir():
        raise FileNotFoundError(f"no trials directory for experiment {experiment!r} (looked in {trials_dir}); "
                                "pass the experiment id with --root, or the experiment directory itself")
    rows = []
    for result_file in sorted(trials_dir.glob("*/result.json")):
        try:
            result = json.loads(result_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        rows.append({"trial": result_file.parent.name, "dir": str(result_file.parent), **result})
    return exp_dir, rows


def _cmd_best(args: argparse.Namespace) -> int:
    exp_dir, rows = _trial_results(args.experiment, Path(args.root))
    if not rows:
        print(f"no finished trial with a result.json under {exp_dir / 'trials'}", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: r["val_accuracy"], reverse=True)
    print(f"{'trial':<10} {'val_acc':>8} {'params':>9}  hyperparameters")
    for r in rows[: args.top]:
        print(f"{r['trial']:<10} {r['val_accuracy']:>8.4f} {r['num_params']:>9}  {json.dumps(r['hyperparameters'])}")
    print(f"best: {rows[0]['dir']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from nni_visplugin.trial import build_parser as trial_parser

    parser = argparse.ArgumentParser(prog="nni-visplugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="print the registered spaces, strategies and datasets").set_defaults(func=_cmd_list)

    search = sub.add_parser("search", help="run one search standalone (the same code path as an NNI trial)",
                            parents=[trial_parser()], add_help=False, conflict_handler="resolve")
    search.add_argument("--epochs", type=int, default=None, help="search epochs")
    search.add_argument("--seed", type=int, default=None, help="random seed")
    search.add_argument("--out", required=True, help="output directory for arch.json, alphas.json, result.json")
    search.set_defaults(func=_cmd_search)

    best = sub.add_parser("best", help="rank an experiment's trials by the derived architecture's val accuracy")
    best.add_argument("experiment", help="experiment id, or the experiment directory")
    best.add_argument("--root", default=str(DEFAULT_EXPERIMENT_ROOT),
                      help="NNI's experimentWorkingDirectory (default: ~/nni-experiments)")
    best.add_argument("--top", type=int, default=10, help="rows to print")
    best.set_defaults(func=_cmd_best)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from nni_visplugin.config import ConfigError
    from nni_visplugin.data import DatasetError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"nni-visplugin: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
