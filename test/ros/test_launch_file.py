"""The installed launch file as `ros2 launch` loads it: its description builds and declares the documented
arguments (run the real thing: test_cameras.py and friends)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import ros_support

ros_support.require_ros()


def test_installed_launch_description_declares_the_documented_arguments(
        installed_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMENT_PREFIX_PATH", installed_env["AMENT_PREFIX_PATH"])  # find the installed package
    from ament_index_python.packages import get_package_share_directory

    path = Path(get_package_share_directory(ros_support.PACKAGE)) / "launch" / ros_support.LAUNCH_FILE
    spec = importlib.util.spec_from_file_location("encoder_launch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {entity.name for entity in description.entities if hasattr(entity, "default_value")}
    assert names == {"shards", "image_topics", "backend", "mode", "params_file", "dds_config", "namespace", "node_name",
                     "managed"}
