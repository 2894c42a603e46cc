"""Labels on the installed node under real ROS 2: with `labels` in the params file, every encoded frame gets a
vision_msgs/Classification on /siglip/labels with the camera frame's header and the top-k labels, whose scores are
SigLIP's probabilities for that frame's embedding; `ros2 param set` changes the labels at run time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# The real-ROS suite's helpers (test/ros/ros_support.py, conftest.py: colcon install, DDS isolation, rclpy client).
ros_support = pytest.importorskip("ros_support", reason="the real-ROS suite (test/ros/ros_support.py) is not here")
ros_support.require_ros()

from sensor_msgs.msg import Image  # noqa: E402
from test_cameras import camera_message, scene  # noqa: E402
from vision_msgs.msg import Classification  # noqa: E402

CAMERA = "/cam_labels/image_raw"
LABELS = ["a photo of an astronaut", "a cup of coffee", "a cat", "a red door", "a forklift"]
TOP_K = 3


@pytest.fixture(scope="module")
def text_shards(tmp_path_factory) -> Path:
    """random:tiny with its text tower (ONNX), built where a builder is (Jazzy's venv has none: ros_support)."""
    return ros_support.build_shard_set(tmp_path_factory.mktemp("text-shards") / "tiny-text", text=True)


def results(message: Classification) -> list[tuple[str, float]]:
    return [(item.class_id, item.score) for item in message.results]


def test_node_publishes_classification_with_the_source_header(installed_env, client, text_shards, tmp_path):
    from rk_siglip_ros.messages.embedding_msg import embedding_from_message
    from rk_siglip_ros.text import TextEncoder

    params = ros_support.write_params(tmp_path / "params.yaml", shards=str(text_shards), backend="onnxruntime",
                                      image_topics=[CAMERA], qos="reliable", labels=LABELS, labels_top_k=TOP_K)
    labels = client.collect(Classification, "/siglip/labels")
    embeddings = client.collect(Image, ros_support.OUTPUT)
    camera = client.publisher(Image, CAMERA)
    with ros_support.running(ros_support.launch_node(installed_env, params_file=str(params))) as node:
        ros_support.wait_until_connected(client, [camera])
        assert ros_support.wait_until(lambda: client.node.count_publishers("/siglip/labels") > 0)
        probe, _ = camera_message("rgb8", scene(0, 99), 1_600_000_000_000_000_000, "probe")
        ros_support.wait_until_receiving(client, {CAMERA: (camera, ros_support.as_probe(probe, CAMERA))})
        sent = []
        for index in range(3):
            message, _ = camera_message("rgb8", scene(0, index), 1_700_000_000_000_000_000 + index * 33_000_000,
                                        "cam_labels_optical")
            camera.publish(message)  # one at a time: the newest-frame mailbox replaces nothing
            sent.append(message)
            assert ros_support.wait_until(lambda: len(labels) >= len(sent) and len(embeddings) >= len(sent)), \
                f"no Classification for frame {index}:\n{node.output}"
        result = ros_support.ros2_cli(installed_env, "param", "set", "/encoder_node", "labels", "['a cat']")
        assert "Set parameter successful" in result.stdout, result.stdout + result.stderr
        message, _ = camera_message("rgb8", scene(0, 9), 1_700_000_001_000_000_000, "cam_labels_optical")
        camera.publish(message)
        assert ros_support.wait_until(lambda: len(labels) >= 4), node.output
        node.interrupt()
        assert node.wait() == 0, node.output
    with TextEncoder.open(text_shards) as text:
        label_set = text.label_set(LABELS)
    by_stamp = {ros_support.stamp_key(m.header): embedding_from_message(m)[0] for _, m in embeddings}
    for source, (_, published) in zip(sent, labels[:3], strict=True):
        assert ros_support.stamp_key(published.header) == ros_support.stamp_key(source.header)
        assert published.header.frame_id == source.header.frame_id
        expected = label_set.top_k(by_stamp[ros_support.stamp_key(source.header)], TOP_K)
        assert [label for label, _ in results(published)] == [label for label, _ in expected]
        assert np.allclose([s for _, s in results(published)], [s for _, s in expected], atol=1e-6)
    assert [label for label, _ in results(labels[3][1])] == ["a cat"]  # the run-time change took effect
