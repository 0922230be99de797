"""Read an experiment's Optuna study back: the Pareto front of a multi-objective search and the
importance of each search hyperparameter (``nni-visplugin pareto`` / ``importance``)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nni_visplugin.utils.errors import UserError

__all__ = ["StudyError", "open_study", "pareto_front", "plot_pareto", "param_importances", "EVALUATORS"]

EVALUATORS = ("fanova", "mdi", "ped-anova")


class StudyError(UserError, ValueError):
    """The study cannot be found or does not support the question asked."""


def open_study(source: str, study_name: str | None = None, root: str | Path = "~/nni-experiments") -> optuna.Study:
    """A study from an experiment id, an experiment directory, a storage URL or ``env:VARIABLE``.

    Experiments keep their study in ``<experiment dir>/optuna.db`` as ``nni-<experiment id>`` unless
    the tuner was given another storage; then pass that URL (or the variable holding it).
    """
    from nni_visplugin.hpo.study import make_storage, redact

    if source.startswith("env:"):
        url = os.environ.get(source[4:])
        if not url:
            raise StudyError(f"environment variable {source[4:]} is not set")
    elif "://" in source:
        url = source
    else:
        exp_dir = Path(source).expanduser()
        if not exp_dir.is_dir():
            exp_dir = Path(root).expanduser() / source
        db = exp_dir / "optuna.db"
        if not db.is_file():
            raise StudyError(f"no study for {source!r}: {db} does not exist (an experiment whose tuner used another "
                             "storage: pass that storage URL or env:VARIABLE instead)")
        url = f"sqlite:///{db}"
        study_name = study_name or f"nni-{exp_dir.name}"
    storage = make_storage(url)
    if study_name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        if len(names) != 1:
            raise StudyError(f"{redact(url)} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                             "name one with --study")
        study_name = names[0]
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise StudyError(f"no study named {study_name!r} in {redact(url)}") from None


def _objectives(study: optuna.Study) -> list[dict[str, str]]:
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    return [{"name": n, "direction": d.name.lower()} for n, d in zip(names, study.directions)]


def _row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"number": trial.number, "values": trial.values, "params": trial.params,
            "nni_parameter_id": attrs.get("nni_parameter_id"), "nni_trial_job_id": attrs.get("nni_trial_job_id"),
            "nni_experiment": attrs.get("nni_experiment")}


def pareto_front(study: optuna.Study) -> dict[str, Any]:
    """The completed trials no other completed trial dominates, as plain data."""
    if len(study.directions) < 2:
        raise StudyError(f"study {study.study_name!r} has one objective: its best trial is the answer "
                         "(nni-visplugin best); run the tuner with objectives for a Pareto front")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = sorted(study.best_trials, key=lambda t: t.values)
    return {"study": study.study_name, "objectives": _objectives(study), "completed_trials": len(complete),
            "trials": [_row(t) for t in front]}


def plot_pareto(study: optuna.Study, front: dict[str, Any], path: str | Path) -> Path:
    """All completed trials, the front highlighted and joined, for the first two objectives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = front["objectives"]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ax.scatter([t.values[0] for t in complete], [t.values[1] for t in complete], s=18, c="0.6",
               label=f"completed trials ({len(complete)})")
    pts = sorted((p["values"][0], p["values"][1], p["number"]) for p in front["trials"])
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="tab:red", ms=6,
            label=f"Pareto front ({len(pts)})")
    for x, y, number in pts:
        ax.annotate(f"#{number}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{objectives[0]['name']} ({objectives[0]['direction']})")
    ax.set_ylabel(f"{objectives[1]['name']} ({objectives[1]['direction']})")
    title = f"{front['study']}"
    if len(objectives) > 2:
        title += f" (first 2 of {len(objectives)} objectives)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def param_importances(study: optuna.Study, evaluator: str = "fanova", objective: str | None = None,
                      seed: int = 0) -> dict[str, float]:
    """Each hyperparameter's share of the variation of one objective over the completed trials."""
    from optuna import importance

    if evaluator not in EVALUATORS:
        raise StudyError(f"unknown evaluator {evaluator!r}; known: {', '.join(EVALUATORS)}")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        raise StudyError(f"study {study.study_name!r} has {len(complete)} completed trial(s); importance needs 2 or more")
    names = [o["name"] for o in _objectives(study)]
    index = 0
    if objective is not None:
        if objective not in names:
            raise StudyError(f"no objective {objective!r}; the study's objectives: {', '.join(names)}")
        index = names.index(objective)
    elif len(names) > 1:
        raise StudyError(f"the study has objectives {', '.join(names)}: choose one with --objective")
    params = {p for t in complete for p in t.params}
    if not params:
        raise StudyError("the completed trials have no hyperparameters")
    if evaluator == "fanova":
        ev = importance.FanovaImportanceEvaluator(seed=seed)
    elif evaluator == "mdi":
        ev = importance.MeanDecreaseImpurityImportanceEvaluator(seed=seed)
    else:
        ev = importance.PedAnovaImportanceEvaluator()
    target = (lambda t: t.values[index]) if len(names) > 1 else None
    if evaluator == "ped-anova" and study.directions[index] == optuna.study.StudyDirection.MAXIMIZE:
        # PED-ANOVA measures what leads to low values of its target.
        target = lambda t: -t.values[index]  # noqa: E731
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes the importances")
        result = importance.get_param_importances(study, evaluator=ev, target=target)
    return {k: (float(v) if math.isfinite(v) else 0.0) for k, v in result.items()}
