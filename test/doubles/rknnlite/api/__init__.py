"""As in rknn-toolkit-lite2 2.5.0: ``from rknnlite.api import RKNNLite``."""

from rknnlite.api.rknn_lite import RKNNLite

__all__ = ["RKNNLite"]
