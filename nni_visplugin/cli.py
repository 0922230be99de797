"""``nni-visplugin``: list what is registered, run a search by hand, read an experiment's results and study."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from nni_visplugin import _compat  # noqa: F401
from nni_visplugin.utils.errors import EXIT_USAGE, ConfigError

DEFAULT_EXPERIMENT_ROOT = Path("~/nni-experiments")

EXIT_CODES = """exit codes:
  0  done
  1  the command ran and found problems (check), an export failed or did not match PyTorch,
     or a best query found no finished trial
  2  a mistake in the command line or a config, a missing or unreadable file: one line on stderr,
     nni-visplugin: error: <what is wrong and what is accepted>
"""


def _cmd_list(args: argparse.Namespace) -> int:
    from nni_visplugin import list_spaces, list_strategies
    from nni_visplugin.data.datasets import DATASETS

    print("spaces:     " + " ".join(list_spaces()))
    print("strategies: " + " ".join(list_strategies()))
    print("datasets:   " + " ".join(DATASETS))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from nni_visplugin.config.search import SearchConfig
    from nni_visplugin.hpo.trial_command import fixed_overrides
    from nni_visplugin.stages.search import run_search

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


def _cmd_latency(args: argparse.Namespace) -> int:
    from nni_visplugin.config.search import SearchConfig, parse_assignments
    from nni_visplugin.nas.latency import load_or_measure

    overrides = parse_assignments(args.set)
    bad = [k for k in overrides if not k.startswith("space.")]
    if bad:
        raise ConfigError(f"latency takes only space.<argument> settings, got {', '.join(bad)}")
    if args.input_shape:
        try:
            c, h, w = (int(v) for v in args.input_shape.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape expects C,H,W, got {args.input_shape!r}") from None
        if h != w:
            raise ConfigError("--input-shape: the spaces take square images")
        if "space.in_channels" in overrides and overrides.pop("space.in_channels") != c:
            raise ConfigError(f"space.in_channels does not match --input-shape {args.input_shape}: remove one")
        data = {"in_channels": c, "image_size": h, "num_classes": args.num_classes}
        config = SearchConfig.create({"space": args.space, **overrides})
    else:
        from nni_visplugin.data.datasets import load_dataset
        from nni_visplugin.nas.fixed import data_kwargs

        config = SearchConfig.create({"space": args.space, "dataset": args.dataset, **overrides})
        data = data_kwargs(load_dataset(args.dataset, args.data_dir))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available on this machine")
    kwargs = {**config.space_kwargs, **data}
    table = load_or_measure(args.out, args.space, kwargs, args.device, args.batch_size,
                            rebuild="auto")
    print(f"{len(table.entries)} choices measured on {table.meta['device_name']} ({table.meta['device']}, "
          f"{table.meta['threads']} threads, batch {table.meta['batch_size']}); fixed part {table.fixed_ms:.3f} ms")
    fastest = table.fixed_ms + table.scale * sum(min(e["ms"].values()) for e in table.entries)
    slowest = table.fixed_ms + table.scale * sum(max(e["ms"].values()) for e in table.entries)
    print(f"networks of this space: {fastest:.3f} ms (fastest choices) to {slowest:.3f} ms (slowest), "
          "ignoring edges a cell drops")
    for cal in table.calibration:
        print(f"  check: measured {cal['measured_ms']:.3f} ms, predicted {table.predict(cal['arch']):.3f} ms")
    print(f"table: {args.out}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import optuna

    from nni_visplugin.hpo.check import check_experiment

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    failed = False
    for path in args.configs:
        problems = check_experiment(path)
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        if problems:
            failed = True
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def _trial_results(experiment: str, root: Path) -> tuple[Path, list[dict[str, Any]]]:
    """result.json of every trial of an experiment (NNI keeps local trials under
    ``<experiment dir>/environments/<env>/trials/<trial id>/``)."""
    exp_dir = Path(experiment).expanduser()
    if not exp_dir.is_dir():
        exp_dir = root.expanduser() / experiment
    if not exp_dir.is_dir():
        raise ConfigError(f"no experiment directory for {experiment!r} (looked in {exp_dir}); "
                                "pass the experiment id with --root, or the experiment directory itself")
    from nni_visplugin.hpo.experiment import collect_trials

    return exp_dir, collect_trials(exp_dir)


def _cmd_best(args: argparse.Namespace) -> int:
    exp_dir, rows = _trial_results(args.experiment, Path(args.root))
    if not rows:
        print(f"no finished trial with a result.json under {exp_dir}", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: r["val_accuracy"], reverse=True)
    print(f"{'trial':<10} {'val_acc':>8} {'params':>9}  hyperparameters")
    for r in rows[: args.top]:
        print(f"{r['trial']:<10} {r['val_accuracy']:>8.4f} {r['num_params']:>9}  {json.dumps(r['hyperparameters'])}")
    print(f"best: {rows[0]['dir']}")
    return 0


def _cmd_pareto(args: argparse.Namespace) -> int:
    from nni_visplugin.hpo.studies import open_study, pareto_front, plot_pareto
    from nni_visplugin.utils.files import write_json

    study = open_study(args.source, args.study, args.root)
    front = pareto_front(study)
    objectives = front["objectives"]
    print(f"Pareto front of {front['study']}: {len(front['trials'])} of {front['completed_trials']} completed trials")
    header = "".join(f"{o['name'] + ' (' + o['direction'][:3] + ')':>22}" for o in objectives)
    print(f"{'trial':>6}{header}  hyperparameters")
    for row in front["trials"]:
        values = "".join(f"{v:>22.4g}" for v in row["values"])
        print(f"{row['number']:>6}{values}  {json.dumps(row['params'], sort_keys=True)}")
    out = Path(args.out)
    write_json(out / "pareto.json", front)
    plot_pareto(study, front, out / "pareto.png")
    print(f"written: {out / 'pareto.json'}, {out / 'pareto.png'}")
    return 0


def _cmd_importance(args: argparse.Namespace) -> int:
    from nni_visplugin.hpo.studies import open_study, param_importances

    study = open_study(args.source, args.study, args.root)
    importances = param_importances(study, args.evaluator, args.objective, args.seed)
    print(f"hyperparameter importance in {study.study_name} ({args.evaluator}):")
    width = max(len(k) for k in importances)
    for name, value in importances.items():
        print(f"  {name:<{width}} {value:6.3f} {'#' * round(40 * value)}")
    if args.json:
        Path(args.json).write_text(json.dumps(importances, indent=1) + "\n")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from nni_visplugin.config.fields import from_namespace
    from nni_visplugin.config.retrain import RetrainConfig
    from nni_visplugin.stages.retrain import retrain

    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    config = from_namespace(RetrainConfig, args, progress=not args.quiet, resume=not args.fresh)
    metrics = retrain(config, args.out)
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "val_accuracy", "num_params", "flops", "latency_ms",
                                              "train_seconds")}))
    print(f"model: {Path(args.out) / 'model.pt'}")
    return 0


def _cmd_baselines(args: argparse.Namespace) -> int:
    from nni_visplugin.stages.baselines import main as baselines

    return baselines(args.baseline_args)


def _cmd_export(args: argparse.Namespace) -> int:
    from nni_visplugin.stages.export import export_model

    report = export_model(args.directory, args.format, args.out, batch_size=args.batch_size)
    print(f"{report['format']}: {report['file']} (max abs diff vs PyTorch {report['max_abs_diff']:.3g} "
          f"at batch sizes {report['verified_batch_sizes']})")
    print(f"input: {report['input']['description']}")
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from nni_visplugin.config.pipeline import PipelineConfig
    from nni_visplugin.stages.pipeline import run_pipeline

    run_pipeline(PipelineConfig.load(args.config, out=args.out, port=args.port, seeds=args.seeds, jobs=args.jobs,
                                     threads=args.threads))
    return 0


def _study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="experiment id, experiment directory, storage URL, or env:VARIABLE holding a URL")
    p.add_argument("--study", default=None, help="study name (default: nni-<experiment id>, or the storage's only study)")
    p.add_argument("--root", default=str(DEFAULT_EXPERIMENT_ROOT),
                   help="NNI's experimentWorkingDirectory (default: ~/nni-experiments)")


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line too, naming the command whose ``--help`` tells more."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"nni-visplugin: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown on every option that has one (the generated flags say theirs already)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _add(sub, name: str, help: str, func, **kwargs) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter, **kwargs)
    p.set_defaults(func=func)
    return p


def _search_parser(sub) -> None:
    from nni_visplugin.hpo.trial_command import build_parser as trial_parser

    p = _add(sub, "search", "run one search standalone (the same code path as an NNI trial)", _cmd_search,
             parents=[trial_parser()], add_help=False, conflict_handler="resolve")
    p.add_argument("-h", "--help", action="help", help="show this help message and exit")
    p.add_argument("--epochs", type=int, default=None, help="search epochs (default: the strategy's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    p.add_argument("--out", required=True, help="output directory for arch.json, alphas.json, result.json")


def _latency_parser(sub) -> None:
    p = _add(sub, "latency", "measure a latency lookup table for a space on this device", _cmd_latency)
    p.add_argument("--space", required=True, help="search space name (nni-visplugin list)")
    p.add_argument("--dataset", default="digits", help="take the input shape and classes from this dataset")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: the dataset's own)")
    p.add_argument("--input-shape", default=None, help="C,H,W instead of a dataset (e.g. 3,224,224)")
    p.add_argument("--num-classes", type=int, default=10, help="classes, with --input-shape")
    p.add_argument("--set", action="append", default=[], metavar="space.KEY=VALUE", help="space arguments; repeatable")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device to measure on")
    p.add_argument("--batch-size", type=int, default=1, help="the deployment batch size")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    p.add_argument("--out", required=True, help="table file (reused when it matches this device)")


def _retrain_parser(sub) -> None:
    from nni_visplugin.config.fields import add_arguments
    from nni_visplugin.config.retrain import RetrainConfig

    p = _add(sub, "retrain", "train a derived architecture from scratch; measure it on the test split", _cmd_retrain)
    p.add_argument("--arch", required=True, help="a search's arch.json (result.json must be next to it)")
    add_arguments(p, RetrainConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument("--fresh", action="store_true",
                   help="delete the checkpoints a run cut short left in --out and start over (default: continue "
                        "from its last complete epoch)")
    p.add_argument("--out", required=True, help="directory for metrics.json, model.pt, arch.json, result.json")


def _export_parser(sub) -> None:
    p = _add(sub, "export", "export a trained model to ONNX or TorchScript, checked against PyTorch", _cmd_export)
    p.add_argument("directory", help="a retrain (or search) output directory")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="the file format")
    p.add_argument("--out", default=None, help="file to write (default: DIRECTORY/model.onnx or model.ts)")
    p.add_argument("--batch-size", type=int, default=0, help="fixed batch size of the graph (0: any batch size)")


def _experiment_parsers(sub) -> None:
    check = _add(sub, "check", "validate experiment configs before nnictl create (exit 1 on problems)", _cmd_check)
    check.add_argument("configs", nargs="+", help="experiment or pipeline YAML files")
    best = _add(sub, "best", "rank an experiment's trials by the derived architecture's val accuracy", _cmd_best)
    best.add_argument("experiment", help="experiment id, or the experiment directory")
    best.add_argument("--root", default=str(DEFAULT_EXPERIMENT_ROOT), help="NNI's experimentWorkingDirectory")
    best.add_argument("--top", type=int, default=10, help="rows to print")


def _pipeline_parser(sub) -> None:
    p = _add(sub, "pipeline", "search with NNI, pick the best, retrain, test, export, write a report", _cmd_pipeline)
    p.add_argument("--config", required=True, help="pipeline YAML (experiment + pipeline sections)")
    p.add_argument("--out", default=None, help="output directory (default: the config's pipeline.out)")
    p.add_argument("--port", type=int, default=None, help="NNI web UI port (default: the config's, or 8080)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="retraining seeds (default: the config's); run again with more seeds and only the new "
                        "ones are retrained, the report redone")
    p.add_argument("--jobs", type=int, default=None,
                   help="seeds retrained at once, each in its own process (default: the config's)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per retraining (default: the config's; 1 when --jobs > 1)")
    p = _add(sub, "baselines", "retrain random and hand-designed cells of the picked search's space with the "
             "pipeline's recipe (nni-visplugin baselines --help)", _cmd_baselines, add_help=False)
    p.add_argument("baseline_args", nargs=argparse.REMAINDER, help="the arguments of the baselines stage")


def _study_parsers(sub) -> None:
    from nni_visplugin.hpo.studies import EVALUATORS

    pareto = _add(sub, "pareto", "print a multi-objective study's Pareto front; write it as JSON and PNG", _cmd_pareto)
    _study_arguments(pareto)
    pareto.add_argument("--out", default=".", help="directory for pareto.json and pareto.png")
    imp = _add(sub, "importance", "how much each search hyperparameter mattered (Optuna's evaluators)",
               _cmd_importance)
    _study_arguments(imp)
    imp.add_argument("--evaluator", choices=EVALUATORS, default="fanova", help="Optuna's importance evaluator")
    imp.add_argument("--objective", default=None, help="objective name, for a multi-objective study")
    imp.add_argument("--seed", type=int, default=0, help="seed of the fanova/mdi forests")
    imp.add_argument("--json", default=None, help="also write the importances to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    from nni_visplugin import __version__

    parser = _Parser(prog="nni-visplugin", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nni-visplugin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add(sub, "list", "print the registered spaces, strategies and datasets", _cmd_list)
    for add in (_search_parser, _latency_parser, _retrain_parser, _export_parser, _experiment_parsers,
                _pipeline_parser, _study_parsers):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user's mistake is one line on stderr and exit code 2, see ``EXIT_CODES``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from nni_visplugin.utils.errors import UserError

    try:
        return args.func(args)
    except UserError as exc:  # anything else is a programming error and keeps its traceback
        print(f"nni-visplugin: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
