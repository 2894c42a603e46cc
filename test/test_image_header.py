"""Declared image sizes read from PNG/JPEG headers before decoding (decompression bombs)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from rk_siglip_ros.messages.image_header import ImageHeaderError, check_declared_size, declared_size


def png(width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    assert ok
    return data.tobytes()


def jpeg(width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return data.tobytes()


def with_png_size(data: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming another size (CRC fixed, so decoders believe it)."""
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return data[:12] + bytes(ihdr) + crc + data[33:]


def with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    position = data.index(b"\xff\xc0")
    return data[:position + 5] + struct.pack(">HH", height, width) + data[position + 9:]


def png_bomb(width: int, height: int) -> bytes:
    """A real PNG of width x height black RGB pixels, compressed row by row (never held whole in memory)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    parts = [compressor.compress(row) for _ in range(height)] + [compressor.flush()]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("encode", "size"), [(png, (37, 21)), (jpeg, (64, 48)), (jpeg, (17, 9))])
def test_declared_size_matches_the_decoded_size(encode, size):
    data = encode(*size)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert declared_size(data) == size == (decoded.shape[1], decoded.shape[0])


def test_other_formats_go_through_pil_header_only():
    ok, data = cv2.imencode(".bmp", np.zeros((5, 7, 3), np.uint8))
    assert ok and declared_size(data.tobytes()) == (7, 5)


def test_a_png_bomb_is_refused_from_its_header():
    bomb = png_bomb(8000, 8000)  # 64 MP, 192 MB decoded, a few hundred KB on the wire
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageHeaderError, match=r"8000x8000 = 64.0 MP, above the limit of 50 MP"):
        check_declared_size(bomb, 50_000_000)


@pytest.mark.parametrize("forge", [lambda: with_png_size(png(8, 8), 100_000, 100_000),
                                   lambda: with_jpeg_size(jpeg(16, 16), 60_000, 60_000)])
def test_forged_headers_are_refused(forge):
    with pytest.raises(ImageHeaderError, match="above the limit"):
        check_declared_size(forge(), 50_000_000)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\x00\x00\x00\x00",
                                  b"not an image at all", bytes(range(256))])
def test_unreadable_headers_are_one_error_type(data):
    with pytest.raises(ImageHeaderError):
        check_declared_size(data, 50_000_000)


def test_no_limit_when_zero():
    assert check_declared_size(with_png_size(png(8, 8), 9000, 9000), 0) == (9000, 9000)
