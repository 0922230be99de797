"""``nni-visplugin``: list what is registered, run a search by hand, read an experiment's results and study."""
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
    from nni_visplugin.utils.errors import ConfigError

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
        raise FileNotFoundError(f"no experiment directory for {experiment!r} (looked in {exp_dir}); "
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
    from nni_visplugin.config.retrain import RetrainConfig
    from nni_visplugin.stages.retrain import retrain

    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    config = RetrainConfig(arch=args.arch, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                           seed=args.seed, width=args.width, cells=args.cells, batch_size=args.batch_size, lr=args.lr,
                           label_smoothing=args.label_smoothing, warmup_epochs=args.warmup_epochs,
                           augment=args.augment, erase=args.erase, holdout_val=args.holdout_val,
                           max_train_samples=args.max_train_samples, image_size=args.image_size,
                           threads=args.threads, device=args.device, progress=not args.quiet,
                           resume=not args.fresh)
    metrics = retrain(config, args.out)
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "val_accuracy", "num_params", "flops", "latency_ms",
                                              "train_seconds")}))
    print(f"model: {Path(args.out) / 'model.pt'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from nni_visplugin.stages.export import ExportError, export_model

    try:
        report = export_model(args.directory, args.format, args.out, batch_size=args.batch_size)
    except ExportError as exc:
        print(f"nni-visplugin: error: {exc}", file=sys.stderr)
        return 1
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


def build_parser() -> argparse.ArgumentParser:
    from nni_visplugin.hpo.trial_command import build_parser as trial_parser

    parser = argparse.ArgumentParser(prog="nni-visplugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="print the registered spaces, strategies and datasets").set_defaults(func=_cmd_list)

    search = sub.add_parser("search", help="run one search standalone (the same code path as an NNI trial)",
                            parents=[trial_parser()], add_help=False, conflict_handler="resolve")
    search.add_argument("--epochs", type=int, default=None, help="search epochs")
    search.add_argument("--seed", type=int, default=None, help="random seed")
    search.add_argument("--out", required=True, help="output directory for arch.json, alphas.json, result.json")
    search.set_defaults(func=_cmd_search)

    lat = sub.add_parser("latency", help="measure a latency lookup table for a space on this device")
    lat.add_argument("--space", required=True, help="search space name")
    lat.add_argument("--dataset", default="digits", help="take the input shape and classes from this dataset")
    lat.add_argument("--data-dir", default=None)
    lat.add_argument("--input-shape", default=None, help="C,H,W instead of a dataset (e.g. 3,224,224)")
    lat.add_argument("--num-classes", type=int, default=10, help="with --input-shape")
    lat.add_argument("--set", action="append", default=[], metavar="space.KEY=VALUE", help="space arguments")
    lat.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    lat.add_argument("--batch-size", type=int, default=1, help="the deployment batch size")
    lat.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    lat.add_argument("--out", required=True, help="table file (reused when it matches this device)")
    lat.set_defaults(func=_cmd_latency)

    ret = sub.add_parser("retrain", help="train a derived architecture from scratch; measure it on the test split")
    ret.add_argument("--arch", required=True, help="a search's arch.json (result.json must be next to it)")
    ret.add_argument("--dataset", default="digits", help="dataset to train and test on")
    ret.add_argument("--data-dir", default=None)
    ret.add_argument("--epochs", type=int, default=50)
    ret.add_argument("--seed", type=int, default=0)
    ret.add_argument("--width", type=int, default=0, help="the space's width (0: as the search measured it)")
    ret.add_argument("--cells", type=int, default=0, help="the space's num_cells (0: as the search measured it)")
    ret.add_argument("--batch-size", type=int, default=64)
    ret.add_argument("--lr", type=float, default=0.05, help="peak learning rate of SGD")
    ret.add_argument("--label-smoothing", type=float, default=0.1)
    ret.add_argument("--warmup-epochs", type=int, default=0, help="linear learning-rate warm-up before the cosine")
    ret.add_argument("--augment", choices=("auto", "none", "crop", "crop-flip"), default="auto",
                     help="auto: random crop, and horizontal flip except for digits")
    ret.add_argument("--erase", type=float, default=0.0,
                     help="random erasing probability (Zhong et al. 2020: a rectangle of 2-40%% of the image, "
                          "aspect 0.3-3.3, filled with noise); 0: off")
    ret.add_argument("--holdout-val", action="store_true",
                     help="train on the training split only, report validation accuracy per epoch and do not "
                          "read the test split (default: train on training + validation, then test once)")
    ret.add_argument("--max-train-samples", type=int, default=0, help="stratified subset of the training split")
    ret.add_argument("--image-size", type=int, default=32, help="imagefolder only")
    ret.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    ret.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ret.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    ret.add_argument("--fresh", action="store_true",
                     help="delete the checkpoints a run cut short left in --out and start over (default: continue "
                          "from its last complete epoch)")
    ret.add_argument("--out", required=True, help="directory for metrics.json, model.pt, arch.json, result.json")
    ret.set_defaults(func=_cmd_retrain)

    exp = sub.add_parser("export", help="export a trained model to ONNX or TorchScript, checked against PyTorch")
    exp.add_argument("directory", help="a retrain (or search) output directory")
    exp.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    exp.add_argument("--out", default=None, help="file to write (default: DIRECTORY/model.onnx or model.ts)")
    exp.add_argument("--batch-size", type=int, default=0, help="fixed batch size of the graph (0: any batch size)")
    exp.set_defaults(func=_cmd_export)

    check = sub.add_parser("check", help="validate experiment configs before nnictl create")
    check.add_argument("configs", nargs="+", help="experiment YAML files")
    check.set_defaults(func=_cmd_check)

    best = sub.add_parser("best", help="rank an experiment's trials by the derived architecture's val accuracy")
    best.add_argument("experiment", help="experiment id, or the experiment directory")
    best.add_argument("--root", default=str(DEFAULT_EXPERIMENT_ROOT),
                      help="NNI's experimentWorkingDirectory (default: ~/nni-experiments)")
    best.add_argument("--top", type=int, default=10, help="rows to print")
    best.set_defaults(func=_cmd_best)

    pipe = sub.add_parser("pipeline", help="search with NNI, pick the best, retrain, test, export, write a report")
    pipe.add_argument("--config", required=True, help="pipeline YAML (experiment + pipeline sections)")
    pipe.add_argument("--out", default=None, help="output directory (default: the config's pipeline.out)")
    pipe.add_argument("--port", type=int, default=None, help="NNI web UI port (default: the config's, or 8080)")
    pipe.add_argument("--seeds", type=int, nargs="+", default=None,
                      help="retraining seeds (default: the config's); run again with more seeds and only the new "
                           "ones are retrained, the report redone")
    pipe.add_argument("--jobs", type=int, default=None,
                      help="seeds retrained at once, each in its own process (default: the config's)")
    pipe.add_argument("--threads", type=int, default=None,
                      help="CPU threads per retraining (default: the config's; 1 when --jobs > 1)")
    pipe.set_defaults(func=_cmd_pipeline)

    pareto = sub.add_parser("pareto", help="print a multi-objective study's Pareto front; write it as JSON and PNG")
    _study_arguments(pareto)
    pareto.add_argument("--out", default=".", help="directory for pareto.json and pareto.png (default: .)")
    pareto.set_defaults(func=_cmd_pareto)

    from nni_visplugin.hpo.studies import EVALUATORS

    imp = sub.add_parser("importance", help="how much each search hyperparameter mattered (Optuna's evaluators)")
    _study_arguments(imp)
    imp.add_argument("--evaluator", choices=EVALUATORS, default="fanova")
    imp.add_argument("--objective", default=None, help="objective name, for a multi-objective study")
    imp.add_argument("--seed", type=int, default=0, help="seed of the fanova/mdi forests")
    imp.add_argument("--json", default=None, help="also write the importances to this JSON file")
    imp.set_defaults(func=_cmd_importance)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from nni_visplugin.data.datasets import DatasetError
    from nni_visplugin.hpo.studies import StudyError
    from nni_visplugin.utils.errors import ConfigError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, StudyError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"nni-visplugin: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
