"""The Optuna-backed assessor against the pruners' definitions, in-process (NNI's own calls)."""
from __future__ import annotations

import statistics

import pytest
from nni.assessor import AssessResult
from optuna.trial import TrialState

from nni_visplugin.tuners import OptunaAssessor, OptunaTuner
from nni_visplugin.hpo.study import LINK

SPACE = {"lr": {"_type": "uniform", "_value": [0, 1]}}


@pytest.fixture(autouse=True)
def _fresh_link():
    LINK.tuner, LINK.pruned = None, {}
    yield
    LINK.tuner, LINK.pruned = None, {}


def _tuner(**kwargs) -> OptunaTuner:
    tuner = OptunaTuner(sampler="random", seed=0, **kwargs)
    tuner.update_search_space(SPACE)
    return tuner


def _run(tuner, assessor, pid, curve, final=True):
    """One trial as NNI's dispatcher drives it: intermediate results, then the end (and a result)."""
    params = tuner.generate_parameters(pid)
    job = f"job{pid}"
    verdicts = []
    for step in range(len(curve)):
        history = [{"default": v, "parameter_id": pid} for v in curve[: step + 1]]
        verdicts.append(assessor.assess_trial(job, history))
        if verdicts[-1] is AssessResult.Bad:
            break  # NNI kills the trial
    pruned = verdicts[-1] is AssessResult.Bad
    if final and not pruned:
        tuner.receive_trial_result(pid, params, {"default": curve[-1]})
    assessor.trial_end(job, not pruned)
    tuner.trial_end(pid, not pruned)
    return verdicts


def test_median_pruner_stops_a_trial_below_the_median_of_completed_trials_at_the_same_step():
    tuner = _tuner()
    assessor = OptunaAssessor(pruner="median", n_startup_trials=3, n_warmup_steps=1)
    curves = [[0.3, 0.5, 0.7], [0.2, 0.6, 0.8], [0.4, 0.4, 0.6]]
    for pid, curve in enumerate(curves):
        assert AssessResult.Bad not in _run(tuner, assessor, pid, curve)  # startup trials are never pruned
    median_step1 = statistics.median(c[1] for c in curves)
    # At step 0 (warm-up) nothing is judged; at step 1 a value under the median stops the trial.
    verdicts = _run(tuner, assessor, 3, [0.0, median_step1 - 0.01, 0.99])
    assert verdicts == [AssessResult.Good, AssessResult.Bad]
    verdicts = _run(tuner, assessor, 4, [0.0, median_step1 + 0.01, 0.99])
    assert AssessResult.Bad not in verdicts
    trials = {t.user_attrs["nni_parameter_id"]: t for t in tuner.study.get_trials()}
    assert trials[3].state == TrialState.PRUNED
    assert trials[3].intermediate_values == {0: 0.0, 1: pytest.approx(median_step1 - 0.01)}
    assert trials[4].state == TrialState.COMPLETE and trials[4].value == 0.99
    assert LINK.pruned == {}


def test_minimize_mode_prunes_the_other_side():
    tuner = _tuner(optimize_mode="minimize")
    assessor = OptunaAssessor(pruner="median", n_startup_trials=2, n_warmup_steps=0)
    for pid, curve in enumerate([[1.0, 0.5], [1.2, 0.7]]):
        _run(tuner, assessor, pid, curve)
    assert _run(tuner, assessor, 2, [2.0, 0.1]) == [AssessResult.Bad]  # worse (larger) than both at step 0
    assert AssessResult.Bad not in _run(tuner, assessor, 3, [0.9, 0.1])


def test_successive_halving_keeps_the_top_of_each_rung():
    tuner = _tuner()
    assessor = OptunaAssessor(pruner="halving", min_resource=1, reduction_factor=2)
    # Rung k is judged at step min_resource * reduction_factor**k (steps 1, 2, 4, ...): a trial goes on
    # when it is in the top 1/reduction_factor (at least the best) of the values that reached the rung.
    assert AssessResult.Bad not in _run(tuner, assessor, 0, [0.5, 0.6, 0.7])
    # step 1: {0.6, 0.2} -> only the best goes on
    assert _run(tuner, assessor, 1, [0.1, 0.2, 0.3]) == [AssessResult.Good, AssessResult.Bad]
    # step 1: {0.6, 0.2, 0.95}, step 2: {0.7, 0.97}: the best each time
    assert AssessResult.Bad not in _run(tuner, assessor, 2, [0.9, 0.95, 0.97])
    states = [t.state for t in tuner.study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]


def test_hyperband_prunes_with_the_tuners_study():
    # Optuna's Hyperband assigns trials to brackets by a hash of the study's name: a fixed name makes
    # the assignment, and so the test, the same on every run (a random name left it without pruning
    # now and then).
    tuner = _tuner(study_name="hyperband")
    assessor = OptunaAssessor(pruner="hyperband", min_resource=1, max_resource=4, reduction_factor=2)
    results = [_run(tuner, assessor, pid, [v, v, v, v]) for pid, v in enumerate([0.9, 0.1, 0.85, 0.05, 0.8, 0.02])]
    states = [t.state for t in tuner.study.get_trials()]
    assert TrialState.PRUNED in states and states[0] == TrialState.COMPLETE
    for verdicts, state in zip(results, states):
        assert (AssessResult.Bad in verdicts) == (state == TrialState.PRUNED)


def test_without_the_plugins_tuner_the_assessor_keeps_its_own_study():
    assessor = OptunaAssessor(pruner="median", n_startup_trials=1, n_warmup_steps=0, optimize_mode="maximize")
    assert assessor.assess_trial("a", [0.5]) is AssessResult.Good
    assert assessor.assess_trial("a", [0.5, 0.7]) is AssessResult.Good
    assessor.trial_end("a", True)
    assert assessor.assess_trial("b", [0.1]) is AssessResult.Bad  # plain floats: NNI's simplest form
    assessor.trial_end("b", False)
    assert [t.state for t in assessor._own.get_trials()] == [TrialState.COMPLETE, TrialState.PRUNED]


def test_non_finite_intermediate_results_are_not_judged():
    tuner = _tuner()
    assessor = OptunaAssessor(pruner="median", n_startup_trials=0, n_warmup_steps=0)
    assert assessor.assess_trial("x", [{"default": float("nan"), "parameter_id": 0}]) is AssessResult.Good


def test_a_multi_objective_tuner_cannot_be_pruned():
    _tuner(objectives={"default": "maximize", "num_params": "minimize"})
    with pytest.raises(ValueError, match="single-objective studies only.*remove the assessor or the objectives"):
        OptunaAssessor()


@pytest.mark.parametrize("kwargs, message", [
    ({"pruner": "nope"}, "unknown pruner 'nope'; known: median, percentile, halving, hyperband"),
    ({"pruner": "no_such_module:Pruner"}, "cannot import 'no_such_module:Pruner'"),
    ({"n_startup_trials": -1}, "n_startup_trials must be an integer >= 0"),
    ({"reduction_factor": 1}, "reduction_factor must be an integer >= 2"),
    ({"percentile": 100}, "percentile must lie in"),
    ({"optimize_mode": "up"}, "optimize_mode must be"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptunaAssessor(**kwargs)


def test_a_custom_pruner_class_by_name():
    tuner = _tuner()
    assessor = OptunaAssessor(pruner="optuna.pruners:ThresholdPruner", pruner_args={"lower": 0.5})
    assert _run(tuner, assessor, 0, [0.6, 0.4]) == [AssessResult.Good, AssessResult.Bad]


def test_a_final_result_overtaking_the_last_intermediate_results_loses_neither():
    """NNI's dispatcher hands final results to the tuner and intermediate results (and trial ends) to
    the assessor on two threads: the final result can be handled before the last curve point."""
    tuner = _tuner()
    assessor = OptunaAssessor(n_startup_trials=10)
    p = tuner.generate_parameters(0)
    history = [{"default": 0.2, "parameter_id": 0}, {"default": 0.5, "parameter_id": 0}]
    assessor.assess_trial("j0", history[:1])
    tuner.receive_trial_result(0, p, {"default": 0.5})  # default queue, first
    assessor.assess_trial("j0", history)  # assessor queue, later
    assessor.trial_end("j0", True)
    tuner.trial_end(0, True)
    # ... and the other way round: the end before the final result.
    p1 = tuner.generate_parameters(1)
    assessor.assess_trial("j1", [{"default": 0.3, "parameter_id": 1}])
    assessor.trial_end("j1", True)
    tuner.trial_end(1, True)
    tuner.receive_trial_result(1, p1, {"default": 0.3})
    t0, t1 = tuner.study.get_trials()
    assert t0.state == TrialState.COMPLETE and t0.value == 0.5 and t0.intermediate_values == {0: 0.2, 1: 0.5}
    assert t1.state == TrialState.COMPLETE and t1.value == 0.3 and t1.intermediate_values == {0: 0.3}


def test_a_result_held_for_the_trials_end_survives_a_crash(tmp_path, monkeypatch):
    """With an assessor the tuner tells a result at the trial's end; if the manager dies in between,
    the resumed tuner finds the result in the study and tells it, instead of failing the trial."""
    monkeypatch.setenv("NNI_LOG_DIRECTORY", str(tmp_path / "exp1" / "log"))
    (tmp_path / "exp1" / "log").mkdir(parents=True)
    tuner = OptunaTuner(sampler="random", seed=0)
    tuner.update_search_space(SPACE)
    OptunaAssessor()
    p0, p1 = tuner.generate_parameters(0), tuner.generate_parameters(1)
    tuner.receive_trial_result(0, p0, {"default": 0.7})  # result in; the end never handled: crash
    LINK.tuner = None
    resumed = OptunaTuner(sampler="random", seed=0)
    t0, t1 = resumed.study.get_trials()
    assert t0.state == TrialState.COMPLETE and t0.value == 0.7
    assert t1.state == TrialState.FAIL  # no result had arrived
