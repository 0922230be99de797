"""Search spaces, registered by name (``nni_visplugin.create_space``)."""
from nni_visplugin import _compat  # noqa: F401  (silences NNI's import-time warnings first)

from .darts_cell import DartsCellSpace
from .proxyless_mobile import ProxylessMobileSpace
from .seed_cells import SeedCellsSpace

__all__ = ["DartsCellSpace", "ProxylessMobileSpace", "SeedCellsSpace"]
