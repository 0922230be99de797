"""A stand-in for a search, for tests of the outer loop: it reports a curve known in advance.

Every intermediate result is ``x * (step + 1) / steps`` and the final result is ``x`` (with
``num_params = 1000 * (1 - x)`` as a second objective), so a test can check that each Optuna trial
holds its own trial's result and that the assessor pruned exactly the trials the pruner's rule
names. The parameters the trial really received are written next to its output.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nni

from nni_visplugin import _compat

params = nni.get_next_parameter()
pid = _compat.current_parameter_id()
out = Path(os.environ.get("NNI_OUTPUT_DIR", "."))
(out / "parameters.json").write_text(json.dumps({"trial_id": nni.get_trial_id(), "parameter_id": pid,
                                                 "parameters": params}))
x, steps = float(params["x"]), int(params.get("steps", 4))
delay = float(os.environ.get("TOY_STEP_SECONDS", "0.5"))
for step in range(steps):
    time.sleep(delay)
    nni.report_intermediate_result({"default": x * (step + 1) / steps, "parameter_id": pid})
nni.report_final_result({"default": x, "num_params": 1000 * (1 - x), "parameter_id": pid})
