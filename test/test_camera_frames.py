"""Camera message -> RGB conversion on real sensor_msgs classes (rosbags typestores, Humble and Jazzy).

Each encoding is built from a real photo (scikit-image's astronaut) in that encoding's own byte layout; the result
must equal rosbags-image's own conversion to rgb8 and resemble the photo it came from.
"""

import array

import cv2
import numpy as np
import pytest
from rosbags.image import compressed_image_to_cvimage, message_to_cvimage
from rosbags.typesys import Stores, get_typestore
from skimage.data import astronaut

from rk_siglip_ros.messages.camera_frames import BadFrame, conversion_library, image_from_message

STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module", params=sorted(STORES))
def types(request):
    store = get_typestore(STORES[request.param])
    return store.types


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rgb = astronaut()[100:292, 150:406]  # a face and a badge: colour, edges, flat areas
    return cv2.resize(rgb, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def header(types, frame_id: str = "cam0"):
    stamp = types["builtin_interfaces/msg/Time"](sec=12, nanosec=345)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def raw_message(types, pixels: np.ndarray, encoding: str, *, big_endian: bool = False, pad: int = 0):
    height, width = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if big_endian else "<")
    rows = np.ascontiguousarray(pixels, dtype=dtype).view(np.uint8).reshape(height, -1)
    if pad:
        rows = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    return types["sensor_msgs/msg/Image"](
        header=header(types), height=height, width=width, encoding=encoding, is_bigendian=int(big_endian),
        step=rows.shape[1], data=rows.reshape(-1).copy())


def compressed_message(types, rgb: np.ndarray, image_format: str):
    ok, encoded = cv2.imencode(f".{image_format}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return types["sensor_msgs/msg/CompressedImage"](header=header(types), format=image_format,
                                                     data=encoded.reshape(-1))


def yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """Pack RGB into 4:2:2 (two bytes per pixel), video-range BT.601 as camera drivers send it, chroma averaged
    over each pixel pair."""
    bt601 = np.array([[0.257, 0.504, 0.098], [-0.148, -0.291, 0.439], [0.439, -0.368, -0.071]])
    yuv = rgb.astype(np.float64) @ bt601.T + np.array([16.0, 128.0, 128.0])
    y = yuv[..., 0].round().clip(0, 255).astype(np.uint8)
    u = ((yuv[:, 0::2, 1] + yuv[:, 1::2, 1]) / 2).round().clip(0, 255).astype(np.uint8)
    v = ((yuv[:, 0::2, 2] + yuv[:, 1::2, 2]) / 2).round().clip(0, 255).astype(np.uint8)
    y0, y1 = y[:, 0::2], y[:, 1::2]
    quads = {"uyvy": (u, y0, v, y1), "yuyv": (y0, u, y1, v)}[order]
    return np.stack(quads, axis=-1).reshape(rgb.shape[0], rgb.shape[1], 2)


def bayer_rggb(rgb: np.ndarray) -> np.ndarray:
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


# encoding -> (pixels in that layout, how close to the photo the result must be: max mean |diff| per channel)
LAYOUTS = {
    "rgb8": (lambda p: p, 0.0),
    "bgr8": (lambda p: cv2.cvtColor(p, cv2.COLOR_RGB2BGR), 0.0),
    "rgba8": (lambda p: cv2.cvtColor(p, cv2.COLOR_RGB2RGBA), 0.0),
    "mono8": (grey, None),
    "yuv422": (lambda p: yuv422(p, "uyvy"), 3.0),
    "uyvy": (lambda p: yuv422(p, "uyvy"), 3.0),
    "yuyv": (lambda p: yuv422(p, "yuyv"), 3.0),
    "yuv422_yuy2": (lambda p: yuv422(p, "yuyv"), 3.0),
    "bayer_rggb8": (bayer_rggb, 12.0),
    "mono16": (lambda p: grey(p).astype(np.uint16) * 257, None),
}


def test_conversion_library_is_cv_bridge_exactly_where_it_imports():
    """cv_bridge (what robots use) whenever ROS's cv_bridge imports, rosbags-image otherwise. The off-ROS suite runs
    without ROS, so here it is the fallback; test/ros/test_cv_bridge.py runs the cv_bridge path under a real ROS 2
    and checks that both give the same pixels for every encoding."""
    try:
        import cv_bridge  # noqa: F401
    except Exception:
        expected = "rosbags-image"
    else:
        expected = "cv_bridge"
    assert conversion_library() == expected


@pytest.mark.parametrize("encoding", sorted(LAYOUTS))
def test_raw_encoding_equals_rosbags_image(types, photo, encoding):
    layout, tolerance = LAYOUTS[encoding]
    msg = raw_message(types, layout(photo), encoding)
    rgb = image_from_message(msg)
    assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, message_to_cvimage(msg, "rgb8"))
    # ...and the conversion is right, not merely the same as the library's:
    diff = np.abs(rgb.astype(np.int16) - photo.astype(np.int16))
    if tolerance is None:  # greyscale: three equal channels, the grey value (16-bit: truncated to 8 bits, -1)
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        assert np.abs(rgb[..., 0].astype(np.int16) - grey(photo)).max() <= 1
    else:
        assert diff.reshape(-1, 3).mean(axis=0).max() <= tolerance, diff.reshape(-1, 3).mean(axis=0)


def test_mono16_big_endian_equals_little_endian(types, photo):
    pixels = grey(photo).astype(np.uint16) * 257
    little = image_from_message(raw_message(types, pixels, "mono16"))
    big_msg = raw_message(types, pixels, "mono16", big_endian=True)
    np.testing.assert_array_equal(image_from_message(big_msg), little)
    np.testing.assert_array_equal(little, message_to_cvimage(raw_message(types, pixels, "mono16"), "rgb8"))


def test_mono16_scales_full_range_linearly(types):
    ramp = np.linspace(0, 65535, WIDTH).astype(np.uint16)[np.newaxis, :].repeat(2, axis=0)
    rgb = image_from_message(raw_message(types, ramp, "mono16"))
    expected = np.round(ramp.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)  # nearest, as cv_bridge
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255


def test_generic_opencv_encodings_read_as_mono8_and_bgr8(types, photo):
    bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(image_from_message(raw_message(types, bgr, "8UC3")), photo)
    np.testing.assert_array_equal(image_from_message(raw_message(types, grey(photo), "8UC1"))[..., 1], grey(photo))


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "yuyv"])
def test_row_padding_is_ignored(types, photo, encoding):
    layout, _ = LAYOUTS[encoding]
    compact = image_from_message(raw_message(types, layout(photo), encoding))
    padded = image_from_message(raw_message(types, layout(photo), encoding, pad=6))
    np.testing.assert_array_equal(padded, compact)


@pytest.mark.parametrize("wrap", [bytes, lambda d: array.array("B", d.tobytes()), list], ids=["bytes", "array", "list"])
def test_rclpy_style_data_containers(types, photo, wrap):
    msg = raw_message(types, cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), "bgr8")
    expected = image_from_message(msg)
    msg.data = wrap(msg.data)
    np.testing.assert_array_equal(image_from_message(msg), expected)


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_compressed_equals_rosbags_image(types, photo, image_format):
    msg = compressed_message(types, photo, image_format)
    rgb = image_from_message(msg)
    assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, compressed_image_to_cvimage(msg, "rgb8"))
    mean_error = np.abs(rgb.astype(np.int16) - photo).mean()
    assert mean_error <= (0 if image_format == "png" else 8), mean_error


def test_greyscale_png_expands_to_three_channels(types, photo):
    ok, encoded = cv2.imencode(".png", grey(photo))
    assert ok
    msg = types["sensor_msgs/msg/CompressedImage"](header=header(types), format="png", data=encoded.reshape(-1))
    rgb = image_from_message(msg)
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey(photo))


# ------------------------------------------------------------------------------------------------ bad frames


def test_unknown_encoding(types, photo):
    msg = raw_message(types, photo, "rgb8")
    msg.encoding = "foo"
    with pytest.raises(BadFrame, match="unknown encoding 'foo'"):
        image_from_message(msg)


def test_data_shorter_than_step_times_height(types, photo):
    msg = raw_message(types, photo, "rgb8")
    msg.data = msg.data[:-1]
    with pytest.raises(BadFrame, match=rf"shorter than step {WIDTH * 3} x height {HEIGHT}"):
        image_from_message(msg)


def test_step_shorter_than_a_row(types, photo):
    msg = raw_message(types, photo, "rgb8")
    msg.step = WIDTH * 3 - 1
    with pytest.raises(BadFrame, match="step .* shorter than width"):
        image_from_message(msg)


@pytest.mark.parametrize("height, width", [(0, 0), (0, WIDTH), (HEIGHT, 0)])
def test_zero_size(types, height, width):
    msg = types["sensor_msgs/msg/Image"](header=header(types), height=height, width=width, encoding="rgb8",
                                         is_bigendian=0, step=width * 3, data=np.zeros(0, np.uint8))
    with pytest.raises(BadFrame, match="zero-size"):
        image_from_message(msg)


def test_odd_width_yuv422(types, photo):
    msg = raw_message(types, photo[:, :7].copy(), "rgb8")
    msg.encoding, msg.step = "yuyv", 7 * 2
    with pytest.raises(BadFrame, match="even width"):
        image_from_message(msg)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_compressed(types, photo, damage):
    msg = compressed_message(types, photo, "jpeg")
    data = msg.data.tobytes()
    msg.data = np.frombuffer({"garbage": b"\xff\xd8" + b"not a jpeg" * 20, "truncated": data[: len(data) // 2],
                              "empty": b""}[damage], np.uint8)
    with pytest.raises(BadFrame, match="corrupt compressed image|empty compressed image"):
        image_from_message(msg)



def test_rgb8_is_returned_without_a_copy_and_padded_rgb8_with_one(types, photo):
    unpadded = raw_message(types, photo, "rgb8")
    rgb = image_from_message(unpadded)
    assert np.array_equal(rgb, photo) and np.shares_memory(rgb, unpadded.data)  # no conversion library, no copy
    padded = raw_message(types, photo, "rgb8", pad=5)
    rgb = image_from_message(padded)
    assert np.array_equal(rgb, photo) and rgb.flags["C_CONTIGUOUS"] and not np.shares_memory(rgb, padded.data)
