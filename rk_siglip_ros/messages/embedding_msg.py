"""Embedding <-> ``sensor_msgs/Image`` fields, shared by the node and the bag tool (no rclpy import).

An embedding travels as a standard image message so any ROS tool can record, replay and decode it:
encoding ``32FC1``, one row per vector (the pooled embedding is 1 x D; patch tokens are T x C), little-endian
float32 bytes, ``step`` = width * 4, and the header of the camera frame it came from.

    rosbags:  Image(header=src.header, **embedding_fields(v))
    rclpy:    fields = embedding_fields(v); msg.data = fields["data"].tobytes() (the rest set as attributes)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rk_siglip_ros.messages.camera_frames import as_uint8

EMBEDDING_ENCODING = "32FC1"
FLOAT_BYTES = 4


def embedding_fields(vector: np.ndarray) -> dict[str, Any]:
    """Image message fields for a 1-D vector (height 1) or a 2-D (rows, width) array, as little-endian float32."""
    array = np.asarray(vector)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"an embedding must be a non-empty 1-D vector or 2-D array, got shape {np.shape(vector)}")
    little_endian = np.ascontiguousarray(array, dtype="<f4")
    height, width = little_endian.shape
    return {
        "height": int(height),
        "width": int(width),
        "encoding": EMBEDDING_ENCODING,
        "is_bigendian": 0,
        "step": int(width * FLOAT_BYTES),
        "data": little_endian.view(np.uint8).reshape(-1),
    }


def embedding_from_message(msg: Any) -> np.ndarray:
    """Decode a 32FC1 Image message to a (height, width) native float32 array; honours is_bigendian and step."""
    if str(msg.encoding) != EMBEDDING_ENCODING:
        raise ValueError(f"an embedding message has encoding {EMBEDDING_ENCODING!r}, got {msg.encoding!r}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if step < width * FLOAT_BYTES:
        raise ValueError(f"step {step} is shorter than width {width} x {FLOAT_BYTES} bytes")
    data = as_uint8(msg.data)
    if data.size < step * height:
        raise ValueError(f"data is {data.size} bytes, shorter than step {step} x height {height}")
    rows = data[: step * height].reshape(height, step)[:, : width * FLOAT_BYTES]
    dtype = np.dtype(">f4" if msg.is_bigendian else "<f4")
    return np.ascontiguousarray(rows).view(dtype).reshape(height, width).astype(np.float32)
