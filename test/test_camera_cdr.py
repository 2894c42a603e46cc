"""camera_cdr: the node's reader for the serialized camera messages DDS delivers (raw=True subscriptions)."""

import sys

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from rk_siglip_ros.node import camera_cdr
from rk_siglip_ros.node.config import ConfigError

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
Header, Time = TYPESTORE.types["std_msgs/msg/Header"], TYPESTORE.types["builtin_interfaces/msg/Time"]


def cdr(message) -> bytes:
    return bytes(TYPESTORE.serialize_cdr(message, message.__msgtype__))


def test_image_fields_and_pixels_come_back_as_sent():
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8)
    sent = TYPESTORE.types["sensor_msgs/msg/Image"](
        header=Header(stamp=Time(sec=17, nanosec=5), frame_id="cam0_optical"), height=4, width=6, encoding="rgb8",
        is_bigendian=0, step=18, data=pixels)
    got = camera_cdr.camera_deserializer("sensor_msgs/msg/Image")(cdr(sent))
    assert (got.header.stamp.sec, got.header.stamp.nanosec, got.header.frame_id) == (17, 5, "cam0_optical")
    assert (got.height, got.width, got.encoding, got.step) == (4, 6, "rgb8", 18)
    assert isinstance(got.data, np.ndarray) and np.array_equal(got.data, pixels)


def test_compressed_image_keeps_format_and_bytes():
    payload = np.frombuffer(b"\xff\xd8 not really a jpeg \xff\xd9", np.uint8)
    sent = TYPESTORE.types["sensor_msgs/msg/CompressedImage"](
        header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam1"), format="jpeg", data=payload)
    got = camera_cdr.camera_deserializer("sensor_msgs/msg/CompressedImage")(cdr(sent))
    assert got.format == "jpeg" and bytes(got.data) == bytes(payload)


def test_truncated_bytes_raise():
    sent = TYPESTORE.types["sensor_msgs/msg/Image"](
        header=Header(stamp=Time(sec=1, nanosec=0), frame_id="f"), height=2, width=2, encoding="mono8",
        is_bigendian=0, step=2, data=np.zeros(4, np.uint8))
    with pytest.raises(Exception):  # noqa: B017 - any error: the dispatcher turns it into a bad frame
        camera_cdr.camera_deserializer("sensor_msgs/msg/Image")(cdr(sent)[:30])


def test_without_rosbags_the_node_gets_one_line_that_says_what_to_install(monkeypatch):
    camera_cdr._typestore.cache_clear()
    monkeypatch.setitem(sys.modules, "rosbags.typesys", None)  # import fails as if rosbags were not installed
    try:
        with pytest.raises(ConfigError, match="pip install rosbags"):
            camera_cdr.camera_deserializer("sensor_msgs/msg/Image")
    finally:
        camera_cdr._typestore.cache_clear()
