"""The cv_bridge converter, what robots use, under a real ROS 2: it is the one picked, it converts every supported
encoding (rclpy messages, with and without row padding, both byte orders), and its pixels equal the rosbags-image
path's (what the off-ROS suite and encode_bag without ROS use)."""

from __future__ import annotations

import array

import numpy as np
import pytest
import ros_support

ros_support.require_ros()

from sensor_msgs.msg import Image  # noqa: E402

from rk_siglip_ros.messages.camera_frames import RAW_ENCODINGS, conversion_library, convert_with  # noqa: E402

HEIGHT, WIDTH = 6, 8
# (encoding, is_bigendian, padding bytes per row): every encoding, padding that is not a whole number of pixels,
# and big-endian 16-bit data.
CASES = [(encoding, bigendian, padding) for encoding, (_, channel_bytes) in RAW_ENCODINGS.items()
         for bigendian in ((0, 1) if channel_bytes == 2 else (0,)) for padding in (0, 6)]


def random_message(encoding: str, bigendian: int, padding: int, seed: int) -> Image:
    pixel_bytes, _ = RAW_ENCODINGS[encoding]
    step = WIDTH * pixel_bytes + padding
    msg = Image(height=HEIGHT, width=WIDTH, encoding=encoding, is_bigendian=bigendian, step=step)
    msg.data = array.array("B", np.random.default_rng(seed).integers(0, 256, HEIGHT * step, np.uint8).tobytes())
    return msg


def test_cv_bridge_is_the_converter_under_ros() -> None:
    assert conversion_library() == "cv_bridge"


@pytest.mark.parametrize("encoding, bigendian, padding", CASES)
def test_cv_bridge_and_rosbags_image_give_the_same_pixels(encoding: str, bigendian: int, padding: int) -> None:
    msg = random_message(encoding, bigendian, padding, seed=len(CASES) + CASES.index((encoding, bigendian, padding)))
    robot = convert_with("cv_bridge", msg)
    offline = convert_with("rosbags-image", msg)
    assert robot.shape == (HEIGHT, WIDTH, 3) and robot.dtype == np.uint8
    np.testing.assert_array_equal(robot, offline)


def test_known_pixels_through_cv_bridge() -> None:
    """Beyond agreeing with each other: the values are the right ones (colour order, 16-bit rounding)."""
    rgb = np.random.default_rng(3).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)

    def message(encoding: str, pixels: np.ndarray) -> Image:
        msg = Image(height=HEIGHT, width=WIDTH, encoding=encoding, is_bigendian=0,
                    step=pixels.strides[0])
        msg.data = array.array("B", np.ascontiguousarray(pixels).tobytes())
        return msg

    np.testing.assert_array_equal(convert_with("cv_bridge", message("rgb8", rgb)), rgb)
    np.testing.assert_array_equal(convert_with("cv_bridge", message("bgr8", rgb[..., ::-1].copy())), rgb)
    ramp = np.linspace(0, 65535, HEIGHT * WIDTH).astype("<u2").reshape(HEIGHT, WIDTH)
    grey = convert_with("cv_bridge", message("mono16", ramp))[..., 0]
    np.testing.assert_array_equal(grey, np.round(ramp * 255.0 / 65535.0).astype(np.uint8))  # nearest level


def test_rgb8_skips_cv_bridge_and_its_copy() -> None:
    """rgb8 needs no conversion: the picked converter hands the message's own pixels on (cv_bridge would copy)."""
    msg = random_message("rgb8", 0, 0, seed=1)
    rgb = convert_with(None, msg)
    assert rgb.shape == (HEIGHT, WIDTH, 3) and np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8))
