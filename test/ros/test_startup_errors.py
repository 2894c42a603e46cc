"""A node that cannot start says why in one line and exits 2 (EXIT_USAGE, as every rk_siglip_ros tool for bad
parameters or setup): every bad parameter value (command line and params file), a missing shard set, a corrupt one.
No traceback, ever. Integers for float parameters are not errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ros_support

ros_support.require_ros()

from rk_siglip_ros.node.encoder_node import EXIT_USAGE  # noqa: E402

PARALLEL_STARTS = 4
# (-p argument, text the one line must contain)
BAD_VALUES = [
    ("mode:=fast", "mode must be one of"),
    ("backend:=gpu", "backend must be one of"),
    ("qos:=fast", "qos must be one of"),
    ("cores:=[0,7]", "cores must be distinct NPU core ids"),
    ("cores:=[1,1]", "cores must be distinct NPU core ids"),
    ("max_rate_hz:=-1.0", "max_rate_hz must be a finite number >= 0"),
    ("max_rate_hz:=fast", "max_rate_hz must be a finite number >= 0"),
    ("max_rate_hz:=true", "max_rate_hz must be a finite number >= 0"),
    ("diagnostic_updater.period:=0", "diagnostic_updater.period must be a finite number > 0"),
    ("diagnostic_updater.period:=-2.5", "diagnostic_updater.period must be a finite number > 0"),
    ("image_topics:=['/a','/a']", "image_topics lists a topic twice"),
    ("image_topics:=['']", "image_topics must list at least one topic name"),
    ("output_topic:=' '", "output_topic must not be empty"),
    ("max_image_pixels:=-5", "max_image_pixels must be a whole number >= 0"),
    # Wrong types: rclpy refuses them before the node's own checks; still one line naming the parameter.
    ("mode:=5", "parameter 'mode'"),
    ("cores:=fast", "parameter 'cores'"),
    ("image_topics:=/just/one/topic", "parameter 'image_topics'"),
    ("publish_patch_tokens:=maybe", "parameter 'publish_patch_tokens'"),
]


def node_lines(output: str) -> list[str]:
    """The node's own output lines: without Cyclone DDS's start-up note on the loopback ("selected interface "lo" is
    not multicast-capable") and `ros2 run`'s own report of the exit status."""
    return [line for line in output.splitlines()
            if line.strip() and "is not multicast-capable" not in line and not line.startswith("[ros2run]")]


def assert_one_line_exit_2(process: ros_support.RosProcess, expected: str) -> None:
    code = process.wait()
    lines = node_lines(process.output)
    assert code == EXIT_USAGE, f"exit {code}:\n{process.output}"
    assert "Traceback" not in process.output, process.output
    assert len(lines) == 1 and expected in lines[0], process.output


def test_each_bad_parameter_value_exits_2_with_one_line(installed_env: dict[str, str], tiny_shards: Path) -> None:
    # A few at a time: each costs a Python start-up. Not all at once: on the loopback (no multicast) Cyclone DDS
    # gives a domain about ten participants per machine ("Failed to find a free participant index").
    for start in range(0, len(BAD_VALUES), PARALLEL_STARTS):
        batch = BAD_VALUES[start:start + PARALLEL_STARTS]
        processes = [(ros_support.run_node(installed_env, "-p", f"shards:={tiny_shards}", "-p", argument), expected)
                     for argument, expected in batch]
        for process, expected in processes:
            with ros_support.running(process):
                assert_one_line_exit_2(process, expected)


def test_a_bad_value_in_a_params_file_exits_2_with_one_line(installed_env: dict[str, str], tiny_shards: Path,
                                                            tmp_path: Path) -> None:
    params = ros_support.write_params(tmp_path / "bad.yaml", shards=str(tiny_shards), max_rate_hz="ten")
    with ros_support.running(ros_support.run_node(installed_env, "--params-file", str(params))) as process:
        assert_one_line_exit_2(process, "max_rate_hz must be a finite number >= 0 (0 = unlimited), got 'ten'")


def test_missing_shard_set_says_how_to_build_one(installed_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "no_such_shards"
    with ros_support.running(ros_support.run_node(installed_env, "-p", f"shards:={missing}")) as process:
        assert_one_line_exit_2(process, f"shards folder {missing} does not exist. Build a shard set with")


@pytest.mark.parametrize("damage", ["manifest", "shard"])
def test_corrupt_shard_set_exits_2_with_one_line(installed_env: dict[str, str], tiny_shards: Path, tmp_path: Path,
                                                 damage: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_shards, broken)
    if damage == "manifest":
        (broken / "manifest.json").write_text("{ not json")
        expected = "manifest.json"
    else:
        manifest = json.loads((broken / "manifest.json").read_text())
        shard_file = sorted(broken.glob("*.onnx"))[0]
        shard_file.write_bytes(shard_file.read_bytes()[:-100])  # truncated, as after an interrupted copy
        expected = shard_file.name
        assert manifest  # the manifest itself is intact
    with ros_support.running(ros_support.run_node(installed_env, "-p", f"shards:={broken}",
                                                  "-p", "backend:=onnxruntime")) as process:
        assert_one_line_exit_2(process, expected)


def test_the_launch_file_reports_the_one_line_and_the_exit_code(installed_env: dict[str, str],
                                                                tmp_path: Path) -> None:
    with ros_support.running(ros_support.launch_node(installed_env, shards=str(tmp_path / "nothing"))) as launch:
        launch.wait()
    assert "Traceback" not in launch.output, launch.output
    assert "does not exist. Build a shard set with" in launch.output
    assert f"exit code {EXIT_USAGE}" in launch.output, launch.output


def test_integers_for_float_parameters_on_the_command_line_start_the_node(
        installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient) -> None:
    from sensor_msgs.msg import Image

    publisher = client.publisher(Image, "/camera/image_raw")
    process = ros_support.run_node(installed_env, "-p", f"shards:={tiny_shards}", "-p", "backend:=onnxruntime",
                                   "-p", "max_rate_hz:=5", "-p", "diagnostic_updater.period:=2")
    with ros_support.running(process):
        ros_support.wait_until_connected(client, [publisher])
        process.interrupt()
        assert process.wait() == 0, process.output
    assert "Traceback" not in process.output
