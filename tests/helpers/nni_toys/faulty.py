"""A sampler and a pruner that fail on purpose, as a user's own plugin might: the experiment must end
with their message instead of hanging RUNNING."""
from __future__ import annotations

import time

import optuna


def _stamp(path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            f.write(repr(time.time()))


class ExplodingSampler(optuna.samplers.RandomSampler):
    def __init__(self, after: int, stamp: str | None = None, seed: int | None = None):
        super().__init__(seed=seed)
        self.after, self.stamp, self.calls = after, stamp, 0

    def sample_independent(self, study, trial, param_name, param_distribution):
        self.calls += 1
        if self.calls > self.after:
            _stamp(self.stamp)
            raise RuntimeError(f"sampler exploded on purpose after {self.after} draws")
        return super().sample_independent(study, trial, param_name, param_distribution)


class ExplodingPruner(optuna.pruners.BasePruner):
    def __init__(self, after: int, stamp: str | None = None):
        self.after, self.stamp, self.calls = after, stamp, 0

    def prune(self, study, trial) -> bool:
        self.calls += 1
        if self.calls > self.after:
            _stamp(self.stamp)
            raise RuntimeError(f"pruner exploded on purpose after {self.after} calls")
        return False
