"""Two encoder nodes side by side on one ROS graph, in different namespaces, without crosstalk: the node's outputs are
relative names, so `namespace:=robot1` moves them to /robot1/siglip/..., a PushRosNamespace around the installed
launch file does the same, SetRemap renames them, and `node_name` names the node. Camera topics are used as given,
so a relative one follows the namespace too."""

from __future__ import annotations

from pathlib import Path

import ros_support

ros_support.require_ros()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_cameras import camera_message, scene  # noqa: E402

FRAMES = 3
# robot2 is started by a launch file of the user's that includes ours under a pushed namespace, with a remap.
WRAPPER = '''
from launch import LaunchDescription
from launch.actions import GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch_ros.actions import PushRosNamespace, SetRemap
from launch_ros.substitutions import FindPackageShare
from launch.substitutions import PathJoinSubstitution


def generate_launch_description():
    encoder = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("rk_siglip_ros"), "launch",
                                                            "encoder.launch.py"])),
        launch_arguments={"params_file": "{params}", "node_name": "encoder_b"}.items())
    return LaunchDescription([GroupAction([PushRosNamespace("robot2"),
                                           SetRemap(src="siglip/embeddings", dst="clip/embeddings"), encoder])])
'''


def test_two_namespaced_instances_keep_their_frames_apart(installed_env: dict[str, str], tiny_shards: Path,
                                                          client: ros_support.RosClient, tmp_path: Path) -> None:
    params = ros_support.write_params(tmp_path / "params.yaml", shards=str(tiny_shards), backend="onnxruntime",
                                      image_topics=["camera/image_raw"], qos="reliable")
    wrapper = tmp_path / "two_robots.launch.py"
    wrapper.write_text(WRAPPER.replace("{params}", str(params)))
    outputs = {"robot1": "/robot1/siglip/embeddings", "robot2": "/robot2/clip/embeddings"}
    received = {robot: client.collect(Image, topic) for robot, topic in outputs.items()}
    unnamespaced = client.collect(Image, ros_support.OUTPUT)
    diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    cameras = {robot: client.publisher(Image, f"/{robot}/camera/image_raw") for robot in outputs}
    robot1 = ros_support.launch_node(installed_env, params_file=str(params), namespace="robot1")
    robot2 = ros_support.RosProcess(["ros2", "launch", str(wrapper)], installed_env)
    with ros_support.running(robot1), ros_support.running(robot2):
        assert ros_support.wait_until(lambda: all(client.node.count_publishers(topic) > 0
                                                  for topic in outputs.values())), robot1.output + robot2.output
        probes = {}
        for robot, camera in cameras.items():
            probe, _ = camera_message("rgb8", scene(0, 99), 1_600_000_000_000_000_000, "probe")
            probes[f"/{robot}/camera/image_raw"] = (camera, ros_support.as_probe(probe, f"/{robot}/camera/image_raw"))
        assert ros_support.probe_until_answered(probes, client.answered_probes, ros_support.wait_until), \
            f"{sorted(client.answered_probes)}:\n{robot1.output}\n{robot2.output}"
        sent: dict[str, set[tuple[int, int]]] = {robot: set() for robot in outputs}
        for index in range(FRAMES):
            for number, (robot, camera) in enumerate(cameras.items()):
                stamp_ns = 1_700_000_000_000_000_000 + index * 33_000_000 + number * 1000
                message, _ = camera_message("rgb8", scene(number, index), stamp_ns, f"{robot}_camera")
                camera.publish(message)
                sent[robot].add(ros_support.stamp_key(message.header))
            assert ros_support.wait_until(lambda: all(len(received[robot]) >= len(sent[robot]) for robot in outputs)), \
                f"{robot1.output}\n{robot2.output}"
        names = set(client.node.get_node_names_and_namespaces())
        assert {("encoder_node", "/robot1"), ("encoder_b", "/robot2")} <= names, names
        assert client.node.count_publishers("/robot2/siglip/embeddings") == 0  # remapped away
        assert client.node.count_publishers(ros_support.OUTPUT) == 0  # nothing left at the global name
        # Each instance reports under its own name on the shared /diagnostics.
        reported = lambda: {status.name for _, array in diagnostics for status in array.status}  # noqa: E731
        assert ros_support.wait_until(lambda: {"robot1/encoder_node: siglip encoder",
                                               "robot2/encoder_b: siglip encoder"} <= reported()), reported()
        for process in (robot1, robot2):
            process.interrupt()
        assert robot1.wait() == 0 and robot2.wait() == 0, robot1.output + robot2.output
    for robot in outputs:
        frames = {(message.header.frame_id, ros_support.stamp_key(message.header)) for _, message in received[robot]}
        assert frames == {(f"{robot}_camera", stamp) for stamp in sent[robot]}, (robot, frames)
    assert unnamespaced == []
