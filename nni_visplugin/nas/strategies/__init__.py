"""Search strategies, registered by name (``nni_visplugin.create_strategy``)."""
from nni_visplugin import _compat  # noqa: F401

from .darts import DartsConfig, DartsStrategy
from .proxyless import ProxylessConfig, ProxylessStrategy

__all__ = ["DartsConfig", "DartsStrategy", "ProxylessConfig", "ProxylessStrategy"]
