"""``nni-visplugin check EXPERIMENT.yml``: catch a bad experiment before NNI starts it.

Every problem is one line naming the field and what to do. The checks are the ones the trial and
the tuner make when they start, run ahead of time: the trial's settings, the search space of
hyperparameters (and that every value it can produce is a valid setting), the tuner's arguments,
dataset paths and latency tables; and NNI's own fields, by NNI's config classes, as ``nnictl create``
reads them (without the files and directories NNI makes on the way).
"""
from __future__ import annotations

import dataclasses
import difflib
import linecache
import logging
import re
import shlex
import traceback
import typing
import warnings
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


# ---------------------------------------------------------------------- NNI's own fields
# Read from NNI's config classes (their dataclass fields and type hints) with NNI's key rule: case
# and underscores are ignored, so trial_concurrency and TrialConcurrency are trialConcurrency too.
def _fields(cls: type) -> dict[str, tuple[str, Any, bool]]:
    """NNI key -> (field name, type hint, required) of one of NNI's config classes."""
    from nni.experiment.config.utils import case_insensitive

    hints = typing.get_type_hints(cls)
    return {case_insensitive(f.name): (f.name, hints[f.name],
                                       f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)}


def _camel(name: str) -> str:
    from nni.experiment.config.utils import camel_case

    return camel_case(name)


def _hint_args(hint: Any) -> list[Any]:
    """The types a hint accepts, Unions flattened."""
    if typing.get_origin(hint) is typing.Union:
        return [a for arg in typing.get_args(hint) for a in _hint_args(arg)]
    return [hint]


def _describe(hint: Any) -> str:
    """A type hint in words: Optional[int] -> 'an integer', Union[Path, str] -> 'a path'."""
    names = {int: "an integer", str: "a string", bool: "true or false", float: "a number", Path: "a path",
             dict: "a mapping", list: "a list", type(None): "null", Any: "anything"}
    if _config_class(hint) is hint:
        return "a mapping"
    args = _hint_args(hint)
    if len(args) > 1:
        kept = [a for a in args if a is not type(None) and not (a is str and Path in args)]
        return " or ".join(dict.fromkeys(_describe(a) for a in kept))
    origin, inner = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in inner)
    if origin is list and inner:
        return f"a list of {_describe(inner[0]).split(' ', 1)[-1]}s"
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _config_class(hint: Any) -> type | None:
    from nni.experiment.config.base import ConfigBase

    for arg in _hint_args(hint):
        arg = (typing.get_args(arg) or [arg])[0] if typing.get_origin(arg) is list else arg
        if isinstance(arg, type) and issubclass(arg, ConfigBase):
            return arg
    return None


def _platforms() -> dict[str, type]:
    """NNI's built-in training services by platform (the classes NNI imports with its config)."""
    from nni.experiment.config.training_service import TrainingServiceConfig

    found, todo = {}, list(TrainingServiceConfig.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if isinstance(getattr(cls, "platform", None), str):
            found[cls.platform] = cls
    return found


def _check_value(value: Any, field: tuple[str, Any, bool], name: str) -> list[str]:
    from nni.experiment.config.algorithm import _AlgorithmConfig
    from nni.experiment.config.training_service import TrainingServiceConfig
    from nni.experiment.config.utils import is_instance

    hint = field[1]
    if is_instance(value, hint):
        # typeguard takes true for an integer (trialConcurrency: yes): NNI would pass it on as is
        if not isinstance(value, bool) or bool in _hint_args(hint) or Any in _hint_args(hint):
            return []
    sub = _config_class(hint)
    if sub is TrainingServiceConfig:
        return _check_training_service(value, name)
    if sub is _AlgorithmConfig:
        return _check_section(value, sub, name, f"{name} config")
    if sub is not None and isinstance(value, dict):
        return []  # another nested config (sharedStorage): NNI's own validation below judges it
    return [f"{name}: must be {_describe(hint) if sub is None else 'a mapping'}, got {value!r}"]


def _check_section(section: Any, cls: type, name: str, what: str, required: bool = False) -> list[str]:
    """Every key of ``section`` a field of ``cls`` with a value of its type; ``required``: none missing."""
    from nni.experiment.config.utils import case_insensitive

    if not isinstance(section, dict):
        return [f"{name}: must be a mapping of the fields of NNI's {what}, got {section!r}"]
    fields = _fields(cls)
    prefix = f"{name}." if name else ""
    problems: list[str] = []
    seen: dict[str, str] = {}
    guessed: set[str] = set()
    for key, value in section.items():
        norm = case_insensitive(str(key))
        if norm not in fields:
            guess = difflib.get_close_matches(norm, list(fields), n=1)
            guessed.update(guess)
            hint = f" (did you mean {_camel(fields[guess[0]][0])}?)" if guess else ""
            problems.append(f"{prefix}{key}: not a field of NNI's {what}{hint}")
        elif norm in seen:
            problems.append(f"{prefix}{key}: the same NNI field as {seen[norm]} (NNI ignores case and underscores); "
                            "keep one")
        else:
            seen[norm] = str(key)
            problems += _check_value(value, fields[norm], f"{prefix}{key}")
    if required:
        problems += [f"{prefix}{_camel(field)}: missing; NNI requires it ({_describe(hint)})"
                     for norm, (field, hint, needed) in fields.items() if needed and norm not in seen.keys() | guessed]
    return problems


def _check_training_service(value: Any, name: str) -> list[str]:
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _check_training_service(item, f"{name}[{i}]")]
    platforms = _platforms()
    known = ", ".join(sorted(platforms))
    if not isinstance(value, dict):
        return [f"{name}: must be a mapping with a platform ({known}), got {value!r}"]
    platform = value.get("platform")  # NNI picks the class by this key spelt exactly so, not case-insensitively
    if platform is None:
        return [f"{name}.platform: missing; NNI's training services: {known}"]
    if platform not in platforms:
        guess = difflib.get_close_matches(str(platform), list(platforms), n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        return [f"{name}.platform: {platform!r} is not one of NNI's training services: {known}{hint}"]
    return _check_section(value, platforms[platform], name, f"{platform} training service config")


def _training_services(value: Any) -> Any:
    """NNI's training-service objects, built here: NNI's own lookup of the platform writes a config
    file into the environment (nni/runtime/config.py), which a check must not do."""
    if isinstance(value, list):
        return [_training_services(item) for item in value]
    return _platforms()[value["platform"]](**value)


def _nni_config(doc: dict[str, Any], base: Path) -> Any:
    """NNI's ``ExperimentConfig`` of ``doc``, paths relative to ``base`` as ``nnictl create`` takes them."""
    from nni.experiment.config import ExperimentConfig, utils

    utils.set_base_path(base)
    try:
        ts_key = next(k for k in doc if utils.case_insensitive(str(k)) == "trainingservice")
        return ExperimentConfig(**{**doc, ts_key: _training_services(doc[ts_key])})
    finally:
        utils.unset_base_path()


def _nni_refusal(exc: BaseException, doc: dict[str, Any]) -> str:
    """One line for an exception of NNI's validation: the field it concerns, then NNI's reason.

    The config object that raised, and how it hangs from the experiment, come from the traceback;
    the field from NNI's message, or from the line that raised (NNI's asserts have no message).
    """
    from nni.experiment.config.base import ConfigBase

    chain: list[Any] = []
    path: list[str] = []
    line = ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if not isinstance(owner, ConfigBase):
            continue
        line = linecache.getline(frame.f_code.co_filename, lineno).strip()
        if chain and chain[-1] is owner:
            continue
        if chain:
            link = _link(chain[-1], owner)
            path = path + [link] if link else []  # not a child: canonical_copy's deep copy, a new root
        chain.append(owner)
    message = str(exc)
    owner = chain[-1] if chain else None
    names = [f.name for f in dataclasses.fields(owner)] if owner is not None else []
    reason = re.sub(r"^\w+Config: ", "", message)
    field = _named_field(reason, names) or next(iter(re.findall(r"self\.(\w+)", line)), None)
    if field not in names:
        return f"NNI's experiment config refuses it: {type(exc).__name__}: {message}"
    if not isinstance(exc, (AssertionError, ValueError)):  # NNI tripped over the value rather than judged it
        reason = f"NNI's config classes fail on it: {type(exc).__name__}: {message}"
    elif not message and line.startswith("assert "):
        condition = re.sub(r"self\.\w+ is None or ", "", line[len("assert "):])
        condition = re.sub(r"utils\.parse_time\((self\.\w+)\)", r"\1", condition)
        condition = condition.replace("self.", "")
        reason = f"NNI requires {condition}, got {getattr(owner, field)!r}"
    for name in sorted(names, key=len, reverse=True):
        reason = re.sub(rf"\b{name}\b", _camel(name), reason)
    reason = reason.removeprefix(_camel(field)).strip()
    return f"{_where(doc, path, field)}: {reason}"


def _link(parent: Any, child: Any) -> str | None:
    for f in dataclasses.fields(parent):
        value = getattr(parent, f.name)
        if value is child:
            return _camel(f.name)
        if isinstance(value, list) and any(item is child for item in value):
            return f"{_camel(f.name)}[{next(i for i, item in enumerate(value) if item is child)}]"
    return None


def _named_field(reason: str, names: list[str]) -> str | None:
    """The field NNI's message names first (as ``trial_concurrency`` or as ``search space file``)."""
    found = []
    for name in names:
        for spelling in (name, name.replace("_", " ")):
            if match := re.search(rf"\b{re.escape(spelling)}\b", reason):
                found.append((match.start(), -len(name), name))
    return min(found)[2] if found else None


def _where(doc: dict[str, Any], path: list[str], field: str) -> str:
    """The key the user wrote: a training service's trialCommand, trialCodeDirectory, ... may be
    given at the top level, from where NNI copies it."""
    from nni.experiment.config.utils import case_insensitive

    section: Any = doc
    for part in path:
        key, _, index = part.partition("[")
        section = next((v for k, v in section.items() if case_insensitive(str(k)) == case_insensitive(key)), {})
        section = section[int(index[:-1])] if index and isinstance(section, list) else section
    keys = {case_insensitive(str(k)) for k in section} if isinstance(section, dict) else set()
    if path and case_insensitive(field) not in keys and case_insensitive(field) in _fields_of_experiment():
        return _camel(field)
    return ".".join(path + [_camel(field)])


def _fields_of_experiment() -> dict[str, tuple[str, Any, bool]]:
    from nni.experiment.config import ExperimentConfig

    return _fields(ExperimentConfig)


def _check_nni(doc: dict[str, Any], base: Path) -> list[str]:
    """NNI's fields of the experiment, checked by NNI's config classes as ``nnictl create`` will.

    First each key, its type and the required ones (all problems at once); when those are right,
    NNI's own validation (ranges, directories, ...), whose first refusal is one line.
    """
    from nni.experiment.config import ExperimentConfig
    from typeguard import TypeCheckError

    problems = _check_section(doc, ExperimentConfig, "", "experiment config", required=True)
    if problems:
        return problems
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NNI's advice (an SSH password, an unset nniManagerIp) is not a problem
        nni_logger = logging.getLogger("nni")
        level = nni_logger.level
        nni_logger.setLevel(logging.ERROR)
        try:
            _nni_config(doc, base).validate()
        except (AssertionError, AttributeError, TypeError, ValueError, TypeCheckError) as exc:
            return [_nni_refusal(exc, doc)]
        finally:
            nni_logger.setLevel(level)
    return []


# ---------------------------------------------------------------------- the experiment
def _load(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The NNI experiment of ``path`` (a pipeline config's ``experiment``), or the problems."""
    from nni_visplugin.utils.errors import ConfigError

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        return None, [f"cannot read ({exc.strerror})"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, [f"malformed YAML{where}: {getattr(exc, 'problem', None) or exc}"]
    if not isinstance(doc, dict):
        return None, ["the experiment config must be a YAML mapping of NNI fields"]
    if isinstance(doc.get("experiment"), dict) and "trialCommand" not in doc:
        # a pipeline config (nni-visplugin pipeline): its `pipeline` section and its experiment
        from nni_visplugin.config.pipeline import PipelineConfig

        try:
            PipelineConfig.load(path)
        except ConfigError as exc:
            return None, [str(exc)]
        doc = doc["experiment"]
    return doc, []


def _check_trial(doc: dict[str, Any]) -> tuple[Any, list[str]]:
    """The trial's settings before tuning (a ``SearchConfig``), or None when there are none to check."""
    from nni_visplugin.config.search import SearchConfig
    from nni_visplugin.utils.errors import ConfigError

    command = doc.get("trialCommand")
    if not isinstance(command, str) or not command.strip():
        return None, ["trialCommand: missing; use python -m nni_visplugin.trial [--space ...] [--set key=value]"]
    args = _trial_args(command)
    if args is None:
        return None, []  # not a plugin trial: nothing more of ours to check
    fixed, error = _parse_trial(args)
    if error:
        return None, [error]
    try:
        base = SearchConfig.create(fixed)
    except ConfigError as exc:
        return None, [f"trialCommand: {exc}"]
    return base, [p for check in (_check_data, _check_latency_table) if (p := check(base)) is not None]


def _draws(space: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """``count`` values the tuner can send for ``space``, from NNI's space compiled as the tuner does.

    The space is compiled here and not by a throw-away tuner: the tuner's error guard
    (:func:`~nni_visplugin.hpo.study.surface_errors`) would log a mistake as a failure with its
    traceback, where ``check`` owes one line.
    """
    import optuna

    from nni_visplugin.hpo.space import compile_space, suggest

    params = compile_space(space)
    optuna_logger = logging.getLogger("optuna")
    level = optuna_logger.level
    optuna_logger.setLevel(logging.WARNING)  # "a new study created in memory" would mislead
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna_logger.setLevel(level)
    return [suggest(study.ask(), params) for _ in range(count)]


def _check_search_space(doc: dict[str, Any], path: Path, base: Any) -> list[str]:
    from nni_visplugin.config.search import SearchConfig
    from nni_visplugin.hpo.space import SearchSpaceError
    from nni_visplugin.utils.errors import ConfigError

    space = doc.get("searchSpace")
    if space is None and doc.get("searchSpaceFile"):
        space_file = path.parent / doc["searchSpaceFile"]
        try:
            space = yaml.safe_load(space_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            return [f"searchSpaceFile: cannot read {space_file}: {exc}"]
    if space is None:
        return ["searchSpace: missing; give the hyperparameters to tune in NNI's format"]
    try:
        sample, *more = _draws(space, 9)
    except SearchSpaceError as exc:
        return [f"searchSpace: {exc}"]
    problems = []
    for key in space:
        try:
            SearchConfig.create({key: sample[key]}, base=base)
        except ConfigError as exc:
            problems.append(f"searchSpace.{key}: {exc}")
    if not problems:
        for values in more:  # values the tuner will really send, all together
            try:
                SearchConfig.create(values, base=base)
            except ConfigError as exc:
                return [f"searchSpace: a value the tuner can draw is refused: {exc}"]
    return problems


def _field_named(problem: str) -> str:
    return re.match(r"[A-Za-z_]*", problem).group()


def check_experiment(path: str | Path) -> list[str]:
    """Problems found in the experiment config at ``path`` (empty when it is fine).

    One line a problem: where NNI's check and the plugin's name the same field, the plugin's line
    (with the plugin's fix) stands for both.
    """
    path = Path(path)
    doc, problems = _load(path)
    if doc is None:
        return problems
    nni = _check_nni(doc, path.parent)
    ours = _check_tuner(doc.get("tuner")) + _check_assessor(doc.get("assessor"), doc.get("tuner"))
    base, trial = _check_trial(doc)
    ours += trial
    if base is not None:
        ours += _check_search_space(doc, path, base)
    named = {_field_named(p) for p in ours}
    return [p for p in nni if _field_named(p) not in named] + ours
