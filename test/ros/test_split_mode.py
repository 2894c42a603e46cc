"""The installed node runs a split shard set with `mode: split` (each layer's parts on all cores at once, ONNX Runtime
on worker slots here): frames in, embeddings out, equal to the encoder's own on the same picture."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

ros_support = pytest.importorskip("ros_support", reason="the real-ROS fixtures (test/ros/ros_support.py) are missing")
ros_support.require_ros()

from sensor_msgs.msg import Image  # noqa: E402
from test_cameras import camera_message, scene  # noqa: E402

CAMERA = "/cam_split/image_raw"


@pytest.fixture(scope="module")
def split_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built where a builder is (Jazzy's venv has none: ros_support.build_shard_set).
    return ros_support.build_shard_set(tmp_path_factory.mktemp("split") / "set", profile="split")


def test_the_node_publishes_with_mode_split(installed_env: dict[str, str], split_shards: Path,
                                            client: ros_support.RosClient) -> None:
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    embeddings = client.collect(Image, ros_support.OUTPUT)
    publisher = client.publisher(Image, CAMERA, ros_support.camera_qos())
    node = ros_support.launch_node(installed_env, shards=str(split_shards), backend="onnxruntime", mode="split",
                                   image_topics=CAMERA)
    picture = scene(0, 0)
    with ros_support.running(node):
        assert node.wait_for_line("mode split"), node.output
        ros_support.wait_until_connected(client, [publisher])
        for index in range(60):
            if embeddings:
                break
            msg, _ = camera_message("rgb8", picture, 1_700_000_000_000_000_000 + index * 33_000_000, "cam_split")
            publisher.publish(msg)
            time.sleep(0.1)
        assert ros_support.wait_until(lambda: len(embeddings) > 0), node.output
        node.interrupt()
        assert node.wait() == 0, node.output
    published = np.frombuffer(bytes(embeddings[0][1].data), dtype=np.float32)
    with SiglipEncoder.open(split_shards, backend="onnxruntime", mode="split") as encoder:
        expected = encoder.encode(picture)
    assert float(published @ expected) >= 0.99999
