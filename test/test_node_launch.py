"""End to end on a machine with ROS 2: launch encoder_node on random:tiny shards, publish camera frames, and check
one embedding per frame with the frame's stamp and frame_id, unit norm. Off-ROS this module skips with the reason.

Run on a robot / ROS workstation (after `colcon build` and sourcing install/setup.bash):
    python3 -m pytest -rs test/test_node_launch.py        (launch_testing's pytest plugin runs it)
    launch_test test/test_node_launch.py
Shards: built here with the builder (needs torch), or taken from $RK_SIGLIP_TEST_SHARDS (a random:tiny set).
"""

import array
import os
import tempfile
import time
import unittest
from pathlib import Path

import pytest

NEEDS_ROS = "needs ROS 2 (rclpy, launch_testing): source /opt/ros/<distro>/setup.bash"
try:
    import launch
    import launch_ros.actions
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
    import rclpy
    from sensor_msgs.msg import CompressedImage, Image
except ImportError:
    pytest.skip(NEEDS_ROS, allow_module_level=True)

import cv2  # noqa: E402 -- only meaningful once ROS is known to be there
import numpy as np  # noqa: E402

from rk_siglip_ros.embedding_msg import embedding_from_message  # noqa: E402

TOPICS = {"/test_cam0/image_raw": Image, "/test_cam1/image_raw/compressed": CompressedImage}
OUTPUT = "/siglip/embeddings"
FRAMES_PER_TOPIC = 3
DEADLINE_S = 60.0  # liveness only: how long to wait for an embedding before calling it lost


def tiny_shards() -> Path:
    given = os.environ.get("RK_SIGLIP_TEST_SHARDS")
    if given:
        return Path(given)
    try:
        from rk_siglip_ros.builder.build import build_shards
    except ImportError as error:
        pytest.skip(f"building random:tiny shards needs the builder stack ({error}); "
                    "or set RK_SIGLIP_TEST_SHARDS=<a random:tiny shard set>")
    out = Path(tempfile.mkdtemp(prefix="rk_siglip_launch_")) / "tiny"
    build_shards("random:tiny", out, profile="pipeline3", formats=("onnx",), progress=False)
    return out


@pytest.mark.launch_test
def generate_test_description():
    node = launch_ros.actions.Node(
        package="rk_siglip_ros", executable="encoder_node", name="encoder_node", output="screen",
        parameters=[{"shards": str(tiny_shards()), "backend": "onnxruntime", "image_topics": list(TOPICS),
                     "qos": "reliable"}])
    return launch.LaunchDescription([node, launch_testing.actions.ReadyToTest()]), {"encoder_node": node}


def camera_frame(topic: str, message_type: type, index: int):
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = np.arange(64, dtype=np.uint8)[np.newaxis, :] * 4
    rgb[..., 1] = index * 40
    rgb[..., 2] = np.arange(48, dtype=np.uint8)[:, np.newaxis] * 5
    msg = message_type()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + index, 123_000 * (index + 1)
    msg.header.frame_id = f"{topic.strip('/').split('/')[0]}_optical"
    if message_type is CompressedImage:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        msg.format = "jpeg"
        msg.data = array.array("B", jpeg.tobytes())
    else:
        msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = 48, 64, "rgb8", 0, 64 * 3
        msg.data = array.array("B", rgb.tobytes())
    return msg


class TestEmbeddings(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()

    @classmethod
    def tearDownClass(cls):
        rclpy.shutdown()

    def setUp(self):
        self.node = rclpy.create_node("encoder_node_test_client")

    def tearDown(self):
        self.node.destroy_node()

    def spin_until(self, condition) -> bool:
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            if condition():
                return True
            rclpy.spin_once(self.node, timeout_sec=0.05)
        return condition()

    def test_one_embedding_per_frame_with_the_source_header(self):
        received = []
        self.node.create_subscription(Image, OUTPUT, received.append, 10)
        publishers = {topic: self.node.create_publisher(kind, topic, 10) for topic, kind in TOPICS.items()}
        self.assertTrue(self.spin_until(lambda: all(p.get_subscription_count() > 0 for p in publishers.values())),
                        "encoder_node did not subscribe to the camera topics")
        self.assertTrue(self.spin_until(lambda: self.node.count_publishers(OUTPUT) > 0))
        sent = []
        for index in range(FRAMES_PER_TOPIC):
            for topic, kind in TOPICS.items():
                frame = camera_frame(topic, kind, index)
                publishers[topic].publish(frame)  # one at a time, so the newest-frame mailbox replaces nothing
                sent.append(frame)
                self.assertTrue(self.spin_until(lambda: len(received) >= len(sent)), f"no embedding for {topic}")
        settle = time.monotonic() + 0.5  # a moment for any duplicate to show up
        while time.monotonic() < settle:
            rclpy.spin_once(self.node, timeout_sec=0.05)
        self.assertEqual(len(received), len(sent))  # exactly one embedding per frame
        for source, embedding in zip(sent, received, strict=True):
            self.assertEqual((embedding.header.stamp.sec, embedding.header.stamp.nanosec),
                             (source.header.stamp.sec, source.header.stamp.nanosec))
            self.assertEqual(embedding.header.frame_id, source.header.frame_id)
            self.assertEqual((embedding.encoding, embedding.height), ("32FC1", 1))
            vector = embedding_from_message(embedding)[0]
            self.assertAlmostEqual(float(np.linalg.norm(vector)), 1.0, places=4)

    def test_diagnostics_are_published(self, proc_output):
        from diagnostic_msgs.msg import DiagnosticArray

        arrays = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", arrays.append, 10)
        self.assertTrue(self.spin_until(lambda: any("siglip encoder" in s.name for a in arrays for s in a.status)))


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_clean_exit_on_sigint(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)  # 0: frames drained, NPU released, no traceback
