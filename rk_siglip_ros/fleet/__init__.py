"""The fleet index (optional extra ``fleet``: lancedb, pyarrow, ray): many bags' frame embeddings in one LanceDB
index, searched by text or image without re-reading a bag.

:mod:`.schema` the index's columns and the model identity they carry; :mod:`.fingerprint` a bag's identity;
:mod:`.thumbnails` the small JPEGs a contact sheet is drawn from; :mod:`.rows` one bag -> its rows (encoding its
frames, or taking the embeddings ``encode_bag`` wrote); :mod:`.store` the LanceDB tables, written one bag per commit;
:mod:`.ann` when and how the IVF-PQ index is built; :mod:`.indexing` the ``index_bags`` run; :mod:`.distributed` the
same encoding on a Ray cluster; :mod:`.search` queries against the index.
"""

from __future__ import annotations

from rk_siglip_ros.bag.errors import BagError


class FleetError(BagError):
    """A fleet index request that cannot be carried out as given; one line that says what to do."""


def require_fleet_extra(tool: str) -> None:
    """FleetError naming the install command when lancedb or pyarrow is missing (a robot install has neither)."""
    try:
        import lancedb  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as error:
        raise FleetError(f"{tool} needs the fleet extra ({error.name} is not installed): "
                         "pip install 'rk_siglip_ros[fleet]' (lancedb, pyarrow, ray)") from None


__all__ = ["FleetError", "require_fleet_extra"]
