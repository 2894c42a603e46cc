"""Seeded generators of hostile inputs for test_fuzz.py: camera messages (rosbags message classes, the same
duck-typed fields rclpy gives the node) and corrupted manifest.json files."""

from __future__ import annotations

import copy
import json
import random
import struct
import zlib
from typing import Any

import cv2
import numpy as np

from rk_siglip_ros.messages.camera_frames import RAW_ENCODINGS

JUNK_VALUES: list[Any] = [None, True, 0, -1, 1, 2**31, 2**64, -(2**63), 1e308, -1e-308, float("nan"), float("inf"),
                          "", "x", "../../etc/passwd", "/abs", "é\u0000", [], [1], [[1, 2]], {}, {"a": 1}, 0.5]


def _encoded(rng: random.Random, extension: str) -> bytes:
    height, width = rng.randint(1, 40), rng.randint(1, 40)
    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(extension, pixels)
    assert ok
    return data.tobytes()


def _forge_png_size(data: bytes, width: int, height: int) -> bytes:
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF) + data[33:]


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    action = rng.randrange(5)
    if action == 0 and buffer:  # truncate
        return bytes(buffer[: rng.randrange(len(buffer))])
    if action == 1:  # flip bytes
        for _ in range(rng.randint(1, 16)):
            if buffer:
                buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        return bytes(buffer)
    if action == 2:  # splice junk in
        at = rng.randrange(len(buffer) + 1)
        return bytes(buffer[:at]) + rng.randbytes(rng.randint(1, 64)) + bytes(buffer[at:])
    if action == 3:  # pure noise
        return rng.randbytes(rng.randint(0, 512))
    return bytes(buffer)  # unchanged: a valid image now and then


def compressed_message(rng: random.Random, types: Any, header: Any) -> Any:
    kind = rng.choice([".png", ".jpg", ".bmp"])
    data = _encoded(rng, kind)
    if kind == ".png" and rng.random() < 0.3:
        side = rng.choice([0, 1, 70_000, 100_000, 2**31 - 1, 2**32 - 1])
        data = _forge_png_size(data, side, rng.choice([side, 1, 0]))
    else:
        data = _mutate_bytes(rng, data)
    image_format = rng.choice(["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "\u00ff", "x" * 300])
    return types["sensor_msgs/msg/CompressedImage"](header=header, format=image_format,
                                                    data=np.frombuffer(data, np.uint8).copy())


def raw_message(rng: random.Random, types: Any, header: Any) -> Any:
    encodings = list(RAW_ENCODINGS)
    encoding = rng.choice([*encodings, *encodings, "nv12", "32FC1", "", "RGB8", "rgb8\u0000", "bayer_xyz8"])
    pixel_bytes = RAW_ENCODINGS.get(encoding, (3, 1))[0]
    width = rng.choice([0, 1, 2, 3, 7, 16, 33, rng.randint(1, 64), 2**31 - 1, 2**32 - 1])
    height = rng.choice([0, 1, 2, 5, 16, rng.randint(1, 64), 2**31 - 1, 2**32 - 1])
    step = rng.choice([width * pixel_bytes, width * pixel_bytes + rng.randint(1, 8), max(0, width * pixel_bytes - 1),
                       0, rng.randint(0, 512), 2**32 - 1])
    wanted = min(step * height, 1 << 16) if step * height < (1 << 32) else 16
    size = rng.choice([wanted, max(0, wanted - 1), wanted + 3, 0, rng.randint(0, 4096)])
    data = np.frombuffer(rng.randbytes(size), np.uint8).copy()
    return types["sensor_msgs/msg/Image"](header=header, height=height & 0xFFFFFFFF, width=width & 0xFFFFFFFF,
                                          encoding=encoding, is_bigendian=rng.choice([0, 1, 0, 255]),
                                          step=step & 0xFFFFFFFF, data=data)


def hostile_message(rng: random.Random, types: Any, header: Any) -> Any:
    return compressed_message(rng, types, header) if rng.random() < 0.5 else raw_message(rng, types, header)


# ---------------------------------------------------------------------------------------------------- manifests


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path into a JSON structure."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*prefix, index))
    return found


def _parent(data: Any, path: tuple) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


def corrupt_manifest(rng: random.Random, data: dict[str, Any]) -> bytes:
    """A manifest.json body derived from a valid ``data``: structural edits (drop, retype, junk values, scale and
    number tweaks) or byte-level damage (truncation, flips, non-UTF-8)."""
    mutated = copy.deepcopy(data)
    for _ in range(rng.randint(1, 4)):
        paths = _paths(mutated)
        if not paths:
            break
        path = rng.choice(paths)
        parent, key = _parent(mutated, path), path[-1]
        action = rng.randrange(5)
        if action == 0:
            del parent[key]
        elif action == 1:
            parent[key] = copy.deepcopy(rng.choice(JUNK_VALUES))
        elif action == 2 and isinstance(parent[key], int | float) and not isinstance(parent[key], bool):
            parent[key] = parent[key] * rng.choice([-1, 0, 1e-30, 1e30, 0.5, 2, float("nan")])
        elif action == 3:
            parent[key] = copy.deepcopy(rng.choice(_paths(data) and [data["shards"], data["model"], "s0.onnx"]))
        else:
            if isinstance(parent, dict):
                parent[rng.choice(["extra", "pooled", "name", "shape"])] = copy.deepcopy(rng.choice(JUNK_VALUES))
    text = json.dumps(mutated).encode()
    if rng.random() < 0.3:
        text = _mutate_bytes(rng, text)
    if rng.random() < 0.05:
        text = text.replace(b'"', b'"\xff', 1)
    return text
