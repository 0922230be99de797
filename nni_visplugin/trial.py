"""NNI trial entry point: ``python -m nni_visplugin.trial [--space ...] [--set key=value ...]``.

Fixed settings come from the command line (the experiment's ``trialCommand``); the tuner's
hyperparameters override them. Each trial runs one search through :func:`run_search`, reports the
supernet's validation accuracy after every epoch as an intermediate result, and the derived
architecture's validation accuracy as the final result. Its files go to ``$NNI_OUTPUT_DIR``.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from nni_visplugin import _compat  # noqa: F401
from nni_visplugin.hpo.trial_command import build_parser, fixed_overrides
from nni_visplugin.utils.errors import UserError

_logger = logging.getLogger("nni_visplugin.trial")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import nni

    from nni_visplugin.config.search import SearchConfig
    from nni_visplugin.stages.search import run_search
    from nni_visplugin.utils.files import write_json

    params = nni.get_next_parameter() or {}
    parameter_id = _compat.current_parameter_id()
    out = Path(args.out or os.environ.get("NNI_OUTPUT_DIR") or ".")
    # What this trial really received: NNI's own records can pair it with another trial's (issue 5726).
    write_json(out / "parameters.json", {"trial_id": nni.get_trial_id(), "sequence_id": nni.get_sequence_id(),
                                         "experiment_id": nni.get_experiment_id(), "parameter_id": parameter_id,
                                         "parameters": params})
    # The tuner's values override the fixed settings; both pass the same validation.
    config = SearchConfig.create(params, base=SearchConfig.create(fixed_overrides(args)))
    _logger.info("trial %s: %s", nni.get_trial_id(), config)

    def report_epoch(epoch: int, record: dict[str, Any]) -> None:
        # parameter_id names the Optuna trial for the assessor (and shows in the web UI next to the curve).
        nni.report_intermediate_result({"default": record["val_accuracy"],
                                        "parameter_id": parameter_id if parameter_id is not None else -1})

    try:
        result = run_search(config, out, on_epoch=report_epoch)
    except UserError:
        raise  # one line, from run() below
    except Exception as exc:
        # One clear line in the trial's log; the traceback follows on stderr. The non-zero exit makes
        # NNI mark the trial FAILED and the tuner tell Optuna FAIL: a failed search is never a result.
        _logger.error("search failed: %s: %s", type(exc).__name__, exc)
        raise
    final = {
        "default": result["val_accuracy"],
        "supernet_val_accuracy": result["supernet_val_accuracy"],
        "num_params": result["num_params"],
        "search_seconds": round(result["search_seconds"], 1),
        # Shown in the web UI next to the metric, so a trial's true hyperparameters can be looked up.
        "parameter_id": parameter_id if parameter_id is not None else -1,
    }
    if "decided" in result:
        # An undecided or collapsed search is visible in the web UI next to its metric, never handed over as a finding.
        final["alpha_entropy"] = round(result["alpha_entropy"], 4)
        final["decided"] = int(result["decided"])
        if "collapsed" in result:
            final["collapsed"] = int(result["collapsed"])
        if result.get("warning"):
            _logger.warning("%s", result["warning"])
    for key in ("latency_predicted_ms", "latency_measured_ms"):
        if key in result:
            final[key] = round(result[key], 4)
    nni.report_final_result(final)
    return 0


def run(argv: list[str] | None = None) -> int:
    """``main`` with the one error path: a user's mistake (a bad setting, a missing dataset) is one
    line in trial.log and exit code 2, which NNI records as a failed trial; any other exception
    keeps its traceback."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"nni-visplugin: error: {exc}", file=sys.stderr, flush=True)
        _logger.error("nni-visplugin: error: %s", exc)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(run())
