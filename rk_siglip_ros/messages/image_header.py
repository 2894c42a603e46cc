"""The pixel count a compressed image declares, read from its header before anything is decoded.

A 243 KB PNG can declare 16000 x 16000 pixels and decode to 768 MB: decoding first and checking after is too late on
an 8 GB robot. PNG (IHDR) and JPEG (SOFn) headers are parsed here directly (a few dozen bytes, no allocation);
other formats go through PIL's ``Image.open``, which reads only the header. Pure Python + PIL, no OpenCV.
"""

from __future__ import annotations

import io
import struct
import warnings

from rk_siglip_ros.errors import UserError

# 50 MP: above any robot camera (a 48 MP phone sensor fits), far below what would exhaust a board's memory
# (50 MP x 3 bytes = 150 MB decoded, plus the RGB copy).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG extension) and CC (DAC) share the range but do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length field


class ImageHeaderError(UserError, ValueError):
    """The header is unreadable (or declares more pixels than allowed: :class:`ImageTooLargeError`)."""


class ImageTooLargeError(ImageHeaderError):
    """The header declares more pixels than allowed."""


def declared_size(data: bytes | memoryview) -> tuple[int, int]:
    """(width, height) as the header of a PNG, JPEG or any format PIL identifies declares it; ImageHeaderError
    when no size can be read."""
    head = bytes(data[:8])
    if head == _PNG_MAGIC:
        return _png_size(data)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return _pil_size(data)


def check_declared_size(data: bytes | memoryview, max_pixels: int) -> tuple[int, int]:
    """:func:`declared_size`, refusing more than ``max_pixels`` pixels (0 = no limit) or an empty image."""
    width, height = declared_size(data)
    if width <= 0 or height <= 0:
        raise ImageHeaderError(f"the header declares an empty image ({width}x{height})")
    excess = pixel_limit_excess(width, height, max_pixels)
    if excess is not None:
        raise ImageTooLargeError(f"the header declares {excess}; not decoded")
    return width, height


def pixel_limit_excess(width: int, height: int, max_pixels: int) -> str | None:
    """Why a ``width`` x ``height`` image is refused under ``max_pixels`` (0 = no limit), or None if it is not: the
    one wording for compressed headers and raw frames alike."""
    if max_pixels <= 0 or width * height <= max_pixels:
        return None
    return (f"{width}x{height} = {width * height / 1e6:.1f} MP, above the limit of {max_pixels / 1e6:g} MP "
            "(max_image_pixels)")


def _png_size(data: bytes | memoryview) -> tuple[int, int]:
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        raise ImageHeaderError("a PNG without an IHDR header")
    width, height = struct.unpack(">II", bytes(data[16:24]))
    return int(width), int(height)


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    view = memoryview(data)
    position = 2
    while position + 4 <= len(view):
        if view[position] != 0xFF:
            raise ImageHeaderError(f"a JPEG with a broken marker at byte {position}")
        marker = view[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        length = (view[position + 2] << 8) | view[position + 3]
        if marker in _JPEG_SOF:
            if length < 7 or position + 9 > len(view):
                break
            height = (view[position + 5] << 8) | view[position + 6]
            width = (view[position + 7] << 8) | view[position + 8]
            return width, height
        if length < 2:
            raise ImageHeaderError(f"a JPEG segment with length {length} at byte {position}")
        position += 2 + length
    raise ImageHeaderError("a JPEG without a frame header (SOF) before its image data")


def _pil_size(data: bytes | memoryview) -> tuple[int, int]:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's own bomb warning: our limit is checked by the caller
            with Image.open(io.BytesIO(bytes(data))) as image:  # reads the header only
                width, height = image.size
    except Image.DecompressionBombError as error:
        raise ImageHeaderError(f"the header declares a decompression bomb ({error})") from None
    except Exception as error:  # noqa: BLE001 - PIL raises many types for data it cannot identify
        raise ImageHeaderError(f"not an image format whose size can be read ({type(error).__name__})") from None
    return int(width), int(height)
