"""Camera messages from the CDR bytes DDS delivered, read with rosbags' deserialiser.

The node takes camera messages serialized and deserialises only the frames it encodes (see mailbox.py). rosbags
reads a 640x480 rgb8 Image into a numpy array in a third of the time rclpy's ``deserialize_message`` takes to build
its ``array.array``, on every encoded frame's way to the encoder (see benchmarks/RESULTS.md, ros_bench). It is also the
reader ``encode_bag`` uses, so a frame from a bag and the same frame live reach the conversion alike.
sensor_msgs/Image and CompressedImage are defined the same in every ROS 2 distro, so Humble's typestore reads any
of them. The messages are rosbags dataclasses: the node copies the header into a std_msgs one when it publishes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from rk_siglip_ros.node.config import ConfigError

MISSING_ROSBAGS = ("the Python package rosbags is missing (the node reads camera messages with it): "
                   'pip install rosbags rosbags-image "numpy<2"')


@functools.lru_cache(maxsize=1)
def _typestore() -> Any:
    try:
        from rosbags.typesys import Stores, get_typestore
    except ImportError:  # rosbags has no rosdep key: a robot gets it from the README's pip line
        raise ConfigError(MISSING_ROSBAGS) from None
    return get_typestore(Stores.ROS2_HUMBLE)


def camera_deserializer(message_type: str) -> Callable[[bytes], Any]:
    """CDR bytes -> message, for ``sensor_msgs/msg/Image`` or ``sensor_msgs/msg/CompressedImage``; raises on bytes
    that are not such a message (the dispatcher makes that a bad frame). ConfigError without rosbags."""
    return functools.partial(_typestore().deserialize_cdr, typename=message_type)
