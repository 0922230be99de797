"""``nni-visplugin check EXPERIMENT.yml``: catch a bad experiment before NNI starts it.

Every problem is one line naming the field and what to do. The checks are the ones the trial and
the tuner make when they start, run ahead of time: the trial's settings, the search space of
hyperparameters (and that every value it can produce is a valid setting), the tuner's arguments,
dataset paths and latency tables.
"""
from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import yaml

from nni_visplugin.hpo.trial_command import TRIAL_MODULE

__all__ = ["check_experiment"]

TUNER_CLASS = "nni_visplugin.tuners.OptunaTuner"
ASSESSOR_CLASS = "nni_visplugin.tuners.OptunaAssessor"


def _trial_args(command: str) -> list[str] | None:
    words = shlex.split(command)
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == TRIAL_MODULE:
            return words[i + 2:]
    return None


def _parse_trial(args: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    import argparse

    from nni_visplugin.hpo.trial_command import build_parser, fixed_overrides

    parser = build_parser()
    parser.exit_on_error = False
    try:
        ns, unknown = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        return None, f"trialCommand: {exc}"
    if unknown:
        return None, f"trialCommand: unknown argument(s) {' '.join(unknown)}; see python -m {TRIAL_MODULE} --help"
    try:
        return fixed_overrides(ns), None
    except ValueError as exc:
        return None, f"trialCommand: {exc}"


def _check_data(config) -> str | None:
    from nni_visplugin.data.datasets import FASHION_MNIST_DIR

    if config.dataset == "digits" or config.download:
        return None
    path = Path(config.data_dir or (FASHION_MNIST_DIR if config.dataset == "fashion-mnist" else "")).expanduser()
    if config.data_dir is None and config.dataset != "fashion-mnist":
        return f"trialCommand --data-dir: dataset {config.dataset} needs a data directory"
    if not path.is_dir():
        hint = " (apt-get install dataset-fashion-mnist)" if config.dataset == "fashion-mnist" else ""
        return f"trialCommand --data-dir: {path} does not exist{hint}"
    return None


def _check_space(config) -> str | None:
    """Build the space once with its settings (at a stand-in image size): a bad value speaks now."""
    from nni_visplugin.data.datasets import CHANNELS
    from nni_visplugin.utils.registry import SPACES, factory_parameters

    data = {"in_channels": CHANNELS.get(config.dataset, 3), "image_size": 32, "num_classes": 10}
    accepted = factory_parameters(SPACES.get(config.space))
    try:
        SPACES.create(config.space, **{**{k: v for k, v in data.items() if k in accepted}, **config.space_kwargs})
    except (TypeError, ValueError) as exc:
        return f"trialCommand: space {config.space} refuses its settings: {exc}"
    return None


def _check_latency_table(config) -> str | None:
    path = config.strategy_kwargs.get("latency_table")
    if not path:
        return None
    from nni_visplugin.nas.latency import LatencyTable, TableMismatch

    path = Path(path).expanduser()
    if not path.exists():
        if config.strategy_kwargs.get("latency_rebuild") == "never":
            return f"latency_table: {path} does not exist, and latency_rebuild=never forbids measuring it"
        return None
    try:
        table = LatencyTable.load(path)
    except TableMismatch as exc:
        return f"latency_table: {exc}"
    if table.meta.get("space") != config.space:
        return (f"latency_table: {path} was measured for space {table.meta.get('space')!r}, not {config.space!r}; "
                "measure one with nni-visplugin latency")
    return None


def _check_class(section: dict[str, Any], name: str, cls: type) -> tuple[list[str], bool]:
    """NNI's codeDirectory rule and the class's argument names; False when the arguments are wrong."""
    from nni_visplugin.utils.registry import check_kwargs

    problems = []
    if "codeDirectory" not in section:
        problems.append(f"{name}.codeDirectory: NNI requires it with className; use '.'")
    try:
        check_kwargs(cls, section.get("classArgs") or {}, f"{name}.classArgs")
    except TypeError as exc:
        return problems + [str(exc)], False
    return problems, True


def _check_tuner(tuner: Any) -> list[str]:
    if not isinstance(tuner, dict):
        return ["tuner: missing; use className: nni_visplugin.tuners.OptunaTuner"]
    if tuner.get("className") != TUNER_CLASS:
        return []  # someone else's tuner: not ours to judge
    from nni_visplugin.hpo.study import make_sampler, storage_url
    from nni_visplugin.hpo.tuner import OptunaTuner, _objectives

    args = tuner.get("classArgs") or {}
    problems, ok = _check_class(tuner, "tuner", OptunaTuner)
    if not ok:
        return problems
    # The same validation the tuner runs when NNI starts it, short of opening the storage.
    steps = (
        lambda: _objectives(args.get("objectives"), args.get("optimize_mode"), args.get("metric", "default")),
        lambda: storage_url(args.get("storage"), args.get("storage_env")),
        lambda: make_sampler(args.get("sampler", "tpe"), args.get("seed"), len(args.get("objectives") or {}) > 1,
                             args.get("sampler_args")),
    )
    for step in steps:
        try:
            step()
        except (ValueError, TypeError) as exc:
            problems.append(f"tuner.classArgs: {exc}")
    return problems


def _check_assessor(assessor: Any, tuner: Any) -> list[str]:
    if assessor is None or not isinstance(assessor, dict) or assessor.get("className") != ASSESSOR_CLASS:
        return []
    from nni_visplugin.hpo.assessor import OptunaAssessor
    from nni_visplugin.hpo.study import PRUNERS, make_pruner

    args = assessor.get("classArgs") or {}
    problems, ok = _check_class(assessor, "assessor", OptunaAssessor)
    if not ok:
        return problems
    name = args.get("pruner", "median")
    if name not in PRUNERS:
        try:
            make_pruner(name, args.get("pruner_args") or {})
        except (ValueError, TypeError) as exc:
            problems.append(f"assessor.classArgs.pruner: {exc}")
    tuner_args = (tuner or {}).get("classArgs") or {} if isinstance(tuner, dict) else {}
    if isinstance(tuner_args.get("objectives"), dict) and len(tuner_args["objectives"]) > 1:
        problems.append("assessor: Optuna prunes single-objective studies only and the tuner has objectives: "
                        "remove the assessor or the objectives")
    return problems


def check_experiment(path: str | Path) -> list[str]:
    """Problems found in the experiment config at ``path`` (empty when it is fine)."""
    from nni_visplugin.config.search import SearchConfig
    from nni_visplugin.hpo.space import SearchSpaceError
    from nni_visplugin.hpo.tuner import OptunaTuner
    from nni_visplugin.utils.errors import ConfigError

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        return [f"{path}: cannot read ({exc.strerror})"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return [f"malformed YAML{where}: {getattr(exc, 'problem', None) or exc}"]
    if not isinstance(doc, dict):
        return ["the experiment config must be a YAML mapping of NNI fields"]
    if isinstance(doc.get("experiment"), dict) and "trialCommand" not in doc:
        # a pipeline config (nni-visplugin pipeline): its `pipeline` section and its experiment
        from nni_visplugin.config.pipeline import PipelineConfig

        try:
            PipelineConfig.load(path)
        except ConfigError as exc:
            return [str(exc)]
        doc = doc["experiment"]

    problems: list[str] = []
    problems += _check_tuner(doc.get("tuner"))
    problems += _check_assessor(doc.get("assessor"), doc.get("tuner"))
    command = doc.get("trialCommand")
    if not isinstance(command, str) or not command.strip():
        return problems + ["trialCommand: missing; use python -m nni_visplugin.trial [--space ...] [--set key=value]"]
    args = _trial_args(command)
    if args is None:
        return problems  # not a plugin trial: nothing more of ours to check
    fixed, error = _parse_trial(args)
    if error:
        return problems + [error]
    try:
        base = SearchConfig.create(fixed)
    except ConfigError as exc:
        return problems + [f"trialCommand: {exc}"]
    for check in (_check_data, _check_space, _check_latency_table):
        if (problem := check(base)) is not None:
            problems.append(problem)

    space = doc.get("searchSpace")
    if space is None and doc.get("searchSpaceFile"):
        space_file = path.parent / doc["searchSpaceFile"]
        try:
            space = yaml.safe_load(space_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            return problems + [f"searchSpaceFile: cannot read {space_file}: {exc}"]
    if space is None:
        return problems + ["searchSpace: missing; give the hyperparameters to tune in NNI's format"]
    quiet = [logging.getLogger(name) for name in ("nni_visplugin.tuners", "optuna")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:  # a throw-away tuner that only checks the space: its start-up lines would mislead
        lg.setLevel(logging.WARNING)
    try:
        tuner = OptunaTuner(sampler="random", seed=0)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    try:
        tuner.update_search_space(space)
    except SearchSpaceError as exc:
        return problems + [f"searchSpace: {exc}"]
    sample = tuner.generate_parameters(0)
    for key in space:
        try:
            SearchConfig.create({key: sample[key]}, base=base)
        except ConfigError as exc:
            problems.append(f"searchSpace.{key}: {exc}")
    if not any(p.startswith("searchSpace.") for p in problems):
        for i in range(1, 9):  # values the tuner will really send, all together
            try:
                SearchConfig.create(tuner.generate_parameters(i), base=base)
            except ConfigError as exc:
                problems.append(f"searchSpace: a value the tuner can draw is refused: {exc}")
                break
    return problems

