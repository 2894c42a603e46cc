"""launch_testing, the ROS way to test a launch file: the INSTALLED encoder.launch.py included as a user's own launch
file would include it, frames published one at a time, one embedding per frame with the frame's stamp and frame_id
and a unit norm, diagnostics published, and every process of the launch exiting 0 after launch_testing's SIGINT.

Runs through pytest (launch_testing's plugin, pytest < 9) in `make test-ros`, or alone with
`launch_test test/ros/test_launch_testing.py` after sourcing a ROS 2 and this package's install.
"""

import array
import os
import time
import unittest
from pathlib import Path

import pytest
import ros_support

ros_support.require_ros()

import cv2  # noqa: E402
import launch  # noqa: E402
import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

TOPICS = {"/test_cam0/image_raw": Image, "/test_cam1/image_raw/compressed": CompressedImage}
FRAMES_PER_TOPIC = 3
DEADLINE_S = 60.0  # liveness only: how long to wait for an embedding before calling it lost


@pytest.mark.launch_test
def generate_test_description():
    # The package as `colcon build` installs it; launch resolves the package and its executable through the
    # environment, so the test process takes the install's environment on.
    os.environ.update(ros_support.installed_env())
    from ament_index_python.packages import get_package_share_directory

    launch_file = Path(get_package_share_directory(ros_support.PACKAGE)) / "launch" / ros_support.LAUNCH_FILE
    encoder = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(launch_file)),
        launch_arguments={"shards": str(ros_support.tiny_shards()), "backend": "onnxruntime",
                          "image_topics": ",".join(TOPICS)}.items())
    return launch.LaunchDescription([encoder, launch_testing.actions.ReadyToTest()]), {}


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
        received, answered_probes = [], set()

        def on_embedding(message: Image) -> None:
            if (probed := ros_support.probed_topic(message)) is not None:
                answered_probes.add(probed)
            else:
                received.append(message)

        self.node.create_subscription(Image, ros_support.OUTPUT, on_embedding, 10)
        publishers = {topic: self.node.create_publisher(kind, topic, 10) for topic, kind in TOPICS.items()}
        self.assertTrue(self.spin_until(lambda: all(p.get_subscription_count() > 0 for p in publishers.values())),
                        "encoder_node did not subscribe to the camera topics")
        self.assertTrue(self.spin_until(lambda: self.node.count_publishers(ros_support.OUTPUT) > 0))
        # The node's side may not have discovered these publishers yet: probe frames until every camera's comes back.
        probes = {topic: (publishers[topic],
                          ros_support.as_probe(camera_frame(topic, kind, FRAMES_PER_TOPIC), topic))
                  for topic, kind in TOPICS.items()}
        self.assertTrue(ros_support.probe_until_answered(probes, answered_probes, self.spin_until),
                        f"no camera frame reached encoder_node; answered: {sorted(answered_probes)}")
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
            vector = np.frombuffer(bytes(embedding.data), "<f4")
            self.assertAlmostEqual(float(np.linalg.norm(vector)), 1.0, places=4)

    def test_diagnostics_are_published(self):
        arrays = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", arrays.append, 10)
        self.assertTrue(self.spin_until(lambda: any("siglip encoder" in s.name for a in arrays for s in a.status)))


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_clean_exit_on_sigint(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)  # 0: frames drained, NPU released, no traceback
