"""Session set-up for the real-ROS suite: a DDS domain of its own on the loopback (before anything imports rclpy),
one colcon build of this package, one random:tiny shard set, and an rclpy client per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ros_support

if ros_support.NO_ROS_REASON is None:
    DOMAIN_ID = ros_support.isolate_dds()


def pytest_report_header() -> str:
    if ros_support.NO_ROS_REASON is not None:
        return f"real-ROS suite: skipped ({ros_support.NO_ROS_REASON})"
    import os

    loopback = ", ".join(f"{key}={value}" for key, value in ros_support.localhost_only().items())
    return (f"real-ROS suite: ROS 2 {os.environ.get('ROS_DISTRO', '?')}, ROS_DOMAIN_ID={DOMAIN_ID}, {loopback}, "
            f"{ros_support.rmw_implementation()}")


@pytest.fixture(scope="session")
def installed_env() -> dict[str, str]:
    """The environment of a shell that sourced the colcon install of this package (built once per session)."""
    return ros_support.installed_env()


@pytest.fixture(scope="session")
def tiny_shards() -> Path:
    """random:tiny, three ONNX shards (pipeline3): what the node and the reference encoder both open."""
    return ros_support.tiny_shards()


@pytest.fixture()
def client() -> Iterator[ros_support.RosClient]:
    ros_client = ros_support.RosClient()
    try:
        yield ros_client
    finally:
        ros_client.close()
