"""The installed node's executable sets up frame-buffer reuse (node/frame_memory.py) as it starts, and leaves glibc's
malloc settings alone when the user has set them. Read from the node's own debug line; what the setting does to
page faults is tested off-ROS (test/test_frame_memory.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import ros_support

ros_support.require_ros()

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc thresholds are a glibc setting")


def start_output(env: dict[str, str], shards: Path) -> str:
    """The output of a node started with its own logger at debug level; the missing shard set ends it at once."""
    process = ros_support.run_node(env, "-p", f"shards:={shards}", "--log-level", "encoder_node:=debug")
    with ros_support.running(process):
        process.wait()
    return process.output


def test_the_node_reuses_frame_buffers_from_its_start(installed_env: dict[str, str], tmp_path: Path) -> None:
    output = start_output(installed_env, tmp_path / "missing")
    assert "frame buffers reused (malloc mmap threshold 32 MB, trim threshold 128 MB)" in output, output


def test_the_users_malloc_settings_are_left_alone(installed_env: dict[str, str], tmp_path: Path) -> None:
    output = start_output({**installed_env, "MALLOC_TRIM_THRESHOLD_": "131072"}, tmp_path / "missing")
    assert "malloc settings as the environment sets them" in output, output
    assert "frame buffers reused" not in output
