"""Search strategies, registered by name (``nni_visplugin.create_strategy``)."""
from nni_visplugin import _compat  # noqa: F401

from .darts import DartsConfig, DartsStrategy

__all__ = ["DartsConfig", "DartsStrategy"]
