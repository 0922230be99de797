"""Search strategies, registered by name (``nni_visplugin.create_strategy``)."""
from nni_visplugin import _compat  # noqa: F401
from nni_visplugin.nas.strategies import _nni  # noqa: F401  (first: NNI without its Lightning one-shot package)

from .base import BilevelStrategy
from .darts import DartsConfig, DartsStrategy
from .gdas import GdasConfig, GdasStrategy
from .proxyless import ProxylessConfig, ProxylessStrategy

__all__ = ["BilevelStrategy", "DartsConfig", "DartsStrategy", "GdasConfig", "GdasStrategy", "ProxylessConfig", "ProxylessStrategy"]
