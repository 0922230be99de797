"""Per-epoch checkpoints of searches and retrainings: written atomically, read back with ``weights_only=True``.

A search or retraining killed at any moment restarts from its last complete epoch. A truncated or corrupt
checkpoint is skipped for the one before it, with a warning naming the file; when checkpoints exist
but none can be read, the run stops with an error naming them instead of silently starting over.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from nni_visplugin.utils.errors import UserError

__all__ = ["CheckpointError", "SearchCheckpoints"]

_logger = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """Checkpoints exist but cannot be used; the message names them."""


class SearchCheckpoints:
    """``<directory>/epoch-NNNN.pt``, the newest ``keep`` of them."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("epoch-*.pt"))

    def save(self, epoch: int, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"epoch-{epoch:04d}.pt"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".epoch-", suffix=".tmp")
        os.close(fd)
        try:
            torch.save({**state, "epoch": epoch}, tmp)
            os.replace(tmp, path)  # a reader sees the old set or the new file, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for old in self.files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        files = self.files()
        if not files:
            return None
        failures = []
        for path in reversed(files):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(state, dict) or "epoch" not in state:
                    raise ValueError("not a search checkpoint")
                return path, state
            except Exception as exc:  # truncated, corrupt, or not ours: try the previous one
                _logger.warning("checkpoint %s is unreadable (%s); trying the previous one", path, exc)
                failures.append(f"{path} ({exc})")
        raise CheckpointError("no readable checkpoint among: " + "; ".join(failures)
                              + ". Remove them to start over.")
