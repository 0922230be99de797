"""Files written atomically, and the cache directory."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_json", "cache_dir"]


def write_json(path: Path, data: Any) -> None:
    """Write then rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """Where the plugin caches measurements: ``$XDG_CACHE_HOME/nni-visplugin`` (``~/.cache``)."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "nni-visplugin"
