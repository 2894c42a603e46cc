"""Camera message -> RGB image (H, W, 3) uint8, the encoder's input.

Messages are duck-typed: a ``sensor_msgs/Image`` (encoding, height, width, step, is_bigendian, data) or a
``sensor_msgs/CompressedImage`` (format, data), whether it comes from rclpy or from a ``rosbags`` typestore.
Every frame is checked before it is converted, so a broken camera driver costs one skipped frame with a reason
(:class:`BadFrame`), never a dead node.

Colour conversion uses ROS's cv_bridge where it is importable (on a robot) and rosbags-image otherwise; both get
the same compact pixels (:func:`compact_message`) and convert with OpenCV the same way, so they agree pixel for
pixel. 16-bit images (mono16, rgb16, bayer_*16, ...) are converted at 16 bits, then scaled linearly to 8 bits with
rounding (:func:`to_rgb8`): the full 16-bit range maps to 0..255, with no auto-exposure. Compressed images are
decoded with OpenCV (JPEG, PNG, anything ``cv2.imdecode`` reads); greyscale ones are expanded to three equal
channels.

No rclpy or ROS message package is imported here; cv_bridge is imported lazily and only if present.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from rk_siglip_ros.errors import UserError
from rk_siglip_ros.messages.image_header import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageHeaderError,
    ImageTooLargeError,
    check_declared_size,
    pixel_limit_excess,
)

IMAGE_MSG_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")

# Raw encodings we accept -> (bytes per pixel, bytes per channel). Bytes per pixel is what `step` must cover.
# nv12/nv21 are left out on purpose: ROS drivers disagree on whether `height` counts the chroma rows.
RAW_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1), "mono8": (1, 1),
    "rgb16": (6, 2), "bgr16": (6, 2), "rgba16": (8, 2), "bgra16": (8, 2), "mono16": (2, 2),
    "yuv422": (2, 1), "uyvy": (2, 1), "yuyv": (2, 1), "yuv422_yuy2": (2, 1),
    "bayer_rggb8": (1, 1), "bayer_bggr8": (1, 1), "bayer_gbrg8": (1, 1), "bayer_grbg8": (1, 1),
    "bayer_rggb16": (2, 2), "bayer_bggr16": (2, 2), "bayer_gbrg16": (2, 2), "bayer_grbg16": (2, 2),
    "8UC1": (1, 1), "8UC3": (3, 1),
}
# Generic OpenCV encodings carry no colour order; ROS treats them as mono8 / bgr8.
GENERIC_ALIASES = {"8UC1": "mono8", "8UC3": "bgr8"}
# Newer names (sensor_msgs image_encodings, Iron+) for the YUV 4:2:2 layouts Humble's cv_bridge only knows by their
# old names: uyvy is "yuv422" (U Y0 V Y1), yuyv is "yuv422_yuy2" (Y0 U Y1 V).
CV_BRIDGE_NAMES = {"uyvy": "yuv422", "yuyv": "yuv422_yuy2"}
TARGET_ENCODING = "rgb8"
TARGET_ENCODING_16 = "rgb16"  # 16-bit input converts at full depth first, then scales to 8 bits (see to_rgb8)


class BadFrame(UserError, ValueError):  # noqa: N818 -- the name is the cross-team interface
    """A frame that cannot be converted; the message is the reason (e.g. "unknown encoding 'foo'")."""


def is_compressed(msg: Any) -> bool:
    """CompressedImage has ``format``; Image has ``encoding``."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def image_from_message(msg: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Convert an Image or CompressedImage message to an (H, W, 3) uint8 RGB array; raises BadFrame.

    Frames above ``max_pixels`` (0 = no limit) are refused before anything is decoded: a compressed image by the
    size its header declares (a small PNG can declare gigabytes), a raw one by width x height. Whatever else goes
    wrong while converting (cv2.error, a message missing fields, a failed allocation) is a BadFrame too: the frame
    is skipped with the reason, never blamed on the encoder.
    """
    try:
        if is_compressed(msg):
            return _rgb_from_compressed(msg, max_pixels)
        return convert_with(None, msg, max_pixels)
    except BadFrame:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to convert one message is that frame's problem
        text = " ".join(str(error).split())[:200]
        raise BadFrame(f"cannot convert the frame: {type(error).__name__}: {text}") from error


# ------------------------------------------------------------------------------------------------------ raw


def check_raw(msg: Any) -> tuple[str, int, int]:
    """Validate an Image message's geometry; returns (encoding, bytes per pixel, bytes per channel)."""
    encoding = str(msg.encoding)
    if encoding not in RAW_ENCODINGS:
        raise BadFrame(f"unknown encoding {encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise BadFrame(f"zero-size image ({width}x{height})")
    pixel_bytes, channel_bytes = RAW_ENCODINGS[encoding]
    if step < width * pixel_bytes:
        raise BadFrame(f"step {step} is shorter than width {width} x {pixel_bytes} bytes per pixel ({encoding})")
    size = len(msg.data)
    if size < step * height:
        raise BadFrame(f"data is {size} bytes, shorter than step {step} x height {height} = {step * height}")
    if encoding in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2") and width % 2:
        raise BadFrame(f"{encoding} needs an even width, got {width}")
    return encoding, pixel_bytes, channel_bytes


def _pixels(msg: Any, pixel_bytes: int, channel_bytes: int) -> np.ndarray:
    """The pixels of a message check_raw has passed, as a compact native-endian array (H, W) or (H, W, C), row
    padding (step) removed."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    rows = as_uint8(msg.data)[: step * height].reshape(height, step)[:, : width * pixel_bytes]
    byte_order = ">" if msg.is_bigendian else "<"
    dtype = np.dtype(f"{byte_order}u{channel_bytes}")
    channels = pixel_bytes // channel_bytes
    pixels = np.ascontiguousarray(rows).view(dtype)
    pixels = pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)
    return pixels.astype(dtype.newbyteorder("="), copy=False)


def convert_with(library: str | None, msg: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """A raw Image message -> RGB uint8 (H, W, 3); raises BadFrame.

    ``library``: None for the one this process uses (cv_bridge where importable, as on a robot), or "cv_bridge" /
    "rosbags-image" to pick one (the tests check that both give the same pixels).
    """
    encoding, pixel_bytes, channel_bytes = check_raw(msg)  # validates first, whichever library converts
    excess = pixel_limit_excess(int(msg.width), int(msg.height), max_pixels)
    if excess is not None:
        raise BadFrame(excess)
    if encoding in GENERIC_ALIASES:
        # cv_bridge refuses 8UC1/8UC3 -> rgb8 ("not a color format"); read generics the same way everywhere.
        encoding, convert = GENERIC_ALIASES[encoding], _convert_with_rosbags
    elif library == "rosbags-image":
        convert = _convert_with_rosbags
    else:
        convert = _colour_converter()  # outside the try: a missing library is not a bad frame
        if library == "cv_bridge" and convert is _convert_with_rosbags:
            raise RuntimeError("cv_bridge is not importable in this process: source a ROS 2 (it ships cv_bridge)")
    if encoding == TARGET_ENCODING:
        # Already RGB: the pixels, without row padding, are the answer. No library call, and no copy of a frame whose
        # rows are not padded (cv_bridge copies even rgb8 -> rgb8: 0.5 ms of a 640x480 frame's latency in the node).
        return _checked_rgb(_pixels(msg, pixel_bytes, channel_bytes))
    compact = compact_message(msg, encoding, pixel_bytes, channel_bytes)
    try:
        rgb = convert(compact, TARGET_ENCODING_16 if channel_bytes == 2 else TARGET_ENCODING)
    except Exception as error:  # cv2.error, ImageConversionError, CvBridgeError: all mean "this frame is bad"
        raise BadFrame(f"cannot convert {encoding} to {TARGET_ENCODING}: {error}") from error
    return _checked_rgb(to_rgb8(rgb))


def compact_message(msg: Any, encoding: str, pixel_bytes: int, channel_bytes: int) -> SimpleNamespace:
    """The message's pixels as an Image-like object both converters read the same way: rows without padding
    (``step`` = width x pixel bytes), native byte order, ``encoding`` as given.

    Neither library honours every ``step``: rosbags-image ignores it, and cv_bridge derives the width from it
    (step / pixel size), which misreads rows whose padding is not a whole number of pixels (rgba8 with 6 bytes of
    padding came out scrambled).
    """
    pixels = _pixels(msg, pixel_bytes, channel_bytes)
    height, width = pixels.shape[:2]
    return SimpleNamespace(encoding=encoding, height=height, width=width, step=width * pixel_bytes,
                           is_bigendian=int(sys.byteorder == "big"), data=pixels.reshape(-1).view(np.uint8))


def to_rgb8(rgb: np.ndarray) -> np.ndarray:
    """16-bit RGB -> 8 bits, value x 255 / 65535 rounded to the nearest integer (what cv_bridge's convertTo does;
    rosbags-image truncates, up to one level darker). 8-bit input is returned as is."""
    if rgb.dtype != np.uint16:
        return rgb
    return ((rgb.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # exact: v / 257 is never a tie


@functools.lru_cache(maxsize=1)
def _colour_converter() -> Callable[[Any, str], np.ndarray]:
    """cv_bridge's converter on a robot, rosbags-image's elsewhere; picked once per process."""
    try:
        from cv_bridge import CvBridge  # ROS's own; the PyPI "cv-bridge" is a ROS 1 copy and fails to import
    except Exception:  # ImportError, or a broken ROS 1 copy raising at import time
        return _convert_with_rosbags
    bridge = CvBridge()

    def convert_with_cv_bridge(compact: Any, target: str) -> np.ndarray:
        named = SimpleNamespace(**{**vars(compact), "encoding": CV_BRIDGE_NAMES.get(compact.encoding,
                                                                                    compact.encoding)})
        return bridge.imgmsg_to_cv2(named, desired_encoding=target)

    return convert_with_cv_bridge


def _convert_with_rosbags(compact: Any, target: str) -> np.ndarray:
    """``compact``: from :func:`compact_message`; ``target``: rgb8, or rgb16 for 16-bit input."""
    from rosbags.image import message_to_cvimage

    return message_to_cvimage(compact, target)


def conversion_library() -> str:
    """Which library converts raw images in this process: "cv_bridge" or "rosbags-image"."""
    return "rosbags-image" if _colour_converter() is _convert_with_rosbags else "cv_bridge"


# ----------------------------------------------------------------------------------------------- compressed


def _rgb_from_compressed(msg: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    data = as_uint8(msg.data)
    image_format = str(msg.format)[:40] or "unknown format"
    if data.size == 0:
        raise BadFrame(f"empty compressed image ({image_format})")
    try:
        check_declared_size(data, max_pixels)  # before decoding: a bomb never allocates
    except ImageTooLargeError as error:
        raise BadFrame(f"compressed image ({image_format}) too large: {error}") from None
    except ImageHeaderError as error:
        raise BadFrame(f"corrupt compressed image ({image_format}): unreadable header: {error}") from None
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR)  # 8 bits: without IMREAD_ANYDEPTH, 16-bit PNGs too
    except cv2.error as error:
        raise BadFrame(f"corrupt compressed image ({image_format}): OpenCV cannot decode it "
                       f"({' '.join(str(error).split())[:160]})") from None
    if decoded is None or decoded.size == 0:
        raise BadFrame(f"corrupt compressed image ({image_format}): {data.size} bytes do not decode")
    if decoded.ndim == 2:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    else:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR
    return _checked_rgb(rgb)


# ------------------------------------------------------------------------------------------------- helpers


def as_uint8(data: Any) -> np.ndarray:
    """A message's ``data`` (numpy array, bytes, array.array or list) as a flat uint8 array, without a copy
    where the buffer allows it."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8).reshape(-1)
    if isinstance(data, list | tuple):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _checked_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BadFrame(f"conversion gave shape {rgb.shape} {rgb.dtype}, expected (H, W, 3) uint8")
    return np.ascontiguousarray(rgb)
