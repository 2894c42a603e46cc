"""The small JPEG kept with every row, so a contact sheet needs no bag."""

from __future__ import annotations

import cv2
import numpy as np

THUMBNAIL_SIDE = 192  # the longer side, in pixels: the contact sheet's tile width (bag.search.TILE)
JPEG_QUALITY = 80  # ~5 KB a frame at 192 x 144


def thumbnail_jpeg(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> bytes:
    """An (H, W, 3) uint8 RGB image shrunk (aspect kept, never enlarged) to ``side`` on its longer side, as JPEG."""
    height, width = rgb.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"could not encode a {width}x{height} thumbnail as JPEG")
    return data.tobytes()


def decode_thumbnail(data: bytes) -> np.ndarray | None:
    """RGB array of a stored thumbnail; None when there is none or it does not decode."""
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
