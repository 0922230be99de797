"""Search spaces, registered by name (``nni_visplugin.create_space``)."""
from nni_visplugin import _compat

_compat.import_nni_evaluator_without_lightning()  # before the spaces import NNI

# isort: split

from .darts_cell import DartsCellSpace
from .nb201_cell import NB201CellSpace
from .proxyless_mobile import ProxylessMobileSpace
from .seed_cells import SeedCellsSpace

__all__ = ["DartsCellSpace", "NB201CellSpace", "ProxylessMobileSpace", "SeedCellsSpace"]
