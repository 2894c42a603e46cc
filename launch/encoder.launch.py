"""Start the SigLIP encoder node.

    ros2 launch rk_siglip_ros encoder.launch.py
    ros2 launch rk_siglip_ros encoder.launch.py image_topics:="[/cam0/image_raw, /cam1/image_raw/compressed]"
    ros2 launch rk_siglip_ros encoder.launch.py shards:=/data/shards/siglip-b16-512 backend:=rknnlite mode:=pipeline
    ros2 launch rk_siglip_ros encoder.launch.py dds_config:=none
    ros2 launch rk_siglip_ros encoder.launch.py namespace:=robot1 image_topics:="[camera/image_raw]"
    ros2 launch rk_siglip_ros encoder.launch.py managed:=true      # a lifecycle node: ros2 lifecycle set ... configure

Arguments: shards, image_topics (a list "[/a, /b]", or comma- or space-separated "/a,/b"), backend and mode: empty
(the default) = the params file's value; a non-empty argument overrides the params file. params_file defaults to
the installed config/encoder.yaml. With shards empty in both, the node uses the installed
share/rk_siglip_ros/shards/default.

namespace (default: none, or the one a PushRosNamespace around this file gives) and node_name (default encoder_node)
place the node: its outputs are relative (siglip/embeddings, siglip/labels, siglip/vision_info, ...), so they move
with the namespace, and SetRemap around this file renames them. managed:=true starts a lifecycle node that waits in
`unconfigured` for a lifecycle manager (or `ros2 lifecycle set <node> configure`, then `activate`).

dds_config: large_images (the default) gives the node the large-image settings of the middleware it runs on
(RMW_IMPLEMENTATION, or the distro's default): on Cyclone DDS the installed config/cyclonedds_large_images.xml (a
larger socket receive buffer, so raw 1080p frames are not lost; see docs/node.md) in front of any CYCLONEDDS_URI you
already set; on Fast DDS nothing (its config/fastdds_large_images.xml acts in the camera drivers' processes, and
the node's qos: auto subscribes reliable there: docs/node.md). none leaves the DDS settings to your environment; a
path uses your own Cyclone DDS or Fast DDS XML file (told apart by its root element). Only the node's process is
affected.
"""

import os
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from rk_siglip_ros.node.config import LAUNCH_ARGUMENTS, MANAGED_FLAG, NODE_NAME, PACKAGE, launch_overrides
from rk_siglip_ros.node.dds import DDS_CONFIG_CHOICES, LARGE_IMAGES, node_environment
from rk_siglip_ros.runtime.scheduler import MODES


def node_middleware() -> str:
    """The middleware the node will load: RMW_IMPLEMENTATION, else the default of this ROS 2 (rclpy asks the RMW
    loader without initialising anything)."""
    chosen = os.environ.get("RMW_IMPLEMENTATION", "").strip()
    if chosen:
        return chosen
    import rclpy

    return rclpy.get_rmw_implementation_identifier()


def node_with_overrides(context: object) -> list:
    """The node, with the launch arguments the user set layered over the params file."""
    def argument(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    parameters: list = [argument("params_file")]
    overrides = launch_overrides({name: argument(name) for name in LAUNCH_ARGUMENTS})
    if overrides:
        parameters.append(overrides)
    config_dir = Path(get_package_share_directory(PACKAGE)) / "config"
    dds_environment = node_environment(argument("dds_config"), config_dir, os.environ, node_middleware())
    node = dict(package=PACKAGE, executable="encoder_node", name=argument("node_name") or NODE_NAME,
                namespace=argument("namespace"), output="screen", emulate_tty=True, parameters=parameters,
                additional_env=dds_environment)
    if _is_true(argument("managed")):
        # launch_ros's LifecycleNode: launch files can also drive its transitions with ChangeState events.
        return [LifecycleNode(**node, arguments=[MANAGED_FLAG])]
    return [Node(**node)]


def _is_true(text: str) -> bool:
    """A launch boolean as ROS launch files spell them; anything else is refused, not read as false."""
    value = text.lower()
    if value not in ("true", "false", "1", "0", ""):
        raise ValueError(f"managed:={text}: expected true or false")
    return value in ("true", "1")


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory(PACKAGE))
    return LaunchDescription([
        DeclareLaunchArgument("shards", default_value="",
                              description="Shard set folder (build one with build_shards); empty = from params_file, "
                                          "else the installed shards/default"),
        DeclareLaunchArgument("image_topics", default_value="",
                              description='Camera topics, e.g. "[/cam0/image_raw, /cam1/image_raw/compressed]"; '
                                          "empty = from params_file"),
        DeclareLaunchArgument("backend", default_value="",
                              description="auto|onnxruntime|rknnlite|sim; empty = from params_file"),
        DeclareLaunchArgument("mode", default_value="",
                              description=f"{'|'.join(MODES)}; empty = from params_file"),
        DeclareLaunchArgument("dds_config", default_value=LARGE_IMAGES,
                              description=f"{'|'.join(DDS_CONFIG_CHOICES)}|<path of a Cyclone DDS or Fast DDS XML "
                                          "file>: the node's DDS settings (large_images: on Cyclone DDS a receive "
                                          "buffer for raw 1080p frames, on Fast DDS nothing; none: the "
                                          "environment's CYCLONEDDS_URI / FASTRTPS_DEFAULT_PROFILES_FILE only)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="The node's namespace (e.g. robot1): its outputs siglip/... move with it, "
                                          "and so do relative camera topics; empty = none (or a pushed one)"),
        DeclareLaunchArgument("node_name", default_value=NODE_NAME, description="The node's name"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="true: a lifecycle node (configure opens the NPU, activate subscribes and "
                                          "publishes, deactivate pauses, cleanup releases the NPU); false: starts "
                                          "encoding at once"),
        DeclareLaunchArgument("params_file", default_value=str(share / "config" / "encoder.yaml"),
                              description="Node parameters (YAML)"),
        OpaqueFunction(function=node_with_overrides),
    ])
