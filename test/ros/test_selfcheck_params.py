"""selfcheck's params files start the installed node (`ros2 launch ... params_file:=`): the latency choice on the
sim backend (allcores with the profile selfcheck fitted), frames in, embeddings out, a clean exit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ros_support = pytest.importorskip("ros_support", reason="the real-ROS fixtures (test/ros/ros_support.py) are missing")
ros_support.require_ros()

from sensor_msgs.msg import Image  # noqa: E402
from test_cameras import camera_message, scene  # noqa: E402

CAMERA = "/cam_selfcheck/image_raw"


def test_the_node_starts_with_the_params_file_selfcheck_writes(installed_env: dict[str, str], tiny_shards: Path,
                                                                client: ros_support.RosClient, tmp_path: Path) -> None:
    import yaml

    from rk_siglip_ros.cli.selfcheck import main as selfcheck

    out = tmp_path / "selfcheck_out"
    assert selfcheck(["--shards", str(tiny_shards), "--backend", "sim", "--out", str(out), "--modes",
                      "pipeline,allcores", "--frames", "2", "--call-frames", "1", "--quiet"]) == 0
    params_file = out / "latency.params.yaml"
    chosen = yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"]
    assert chosen["backend"] == "sim" and chosen["mode"] in ("pipeline", "allcores")

    embeddings = client.collect(Image, ros_support.OUTPUT)
    publisher = client.publisher(Image, CAMERA, ros_support.camera_qos())
    node = ros_support.launch_node(installed_env, params_file=str(params_file), image_topics=CAMERA)
    with ros_support.running(node):
        assert node.wait_for_line(f"mode {chosen['mode']}"), node.output  # the params file's choice is in force
        ros_support.wait_until_connected(client, [publisher])
        for index in range(60):
            if embeddings:
                break
            msg, _ = camera_message("rgb8", scene(0, index), 1_700_000_000_000_000_000 + index * 33_000_000,
                                    "cam_selfcheck")
            publisher.publish(msg)
            time.sleep(0.1)
        assert ros_support.wait_until(lambda: len(embeddings) > 0), node.output
        node.interrupt()
        assert node.wait() == 0, node.output
