"""Start the SigLIP encoder node.

    ros2 launch rk_siglip_ros encoder.launch.py
    ros2 launch rk_siglip_ros encoder.launch.py image_topics:="[/cam0/image_raw, /cam1/image_raw/compressed]"
    ros2 launch rk_siglip_ros encoder.launch.py shards:=/data/shards/siglip-b16-512 backend:=rknnlite mode:=pipeline
    ros2 launch rk_siglip_ros encoder.launch.py dds_config:=none

Arguments: shards, image_topics (a list "[/a, /b]", or comma- or space-separated "/a,/b"), backend and mode: empty
(the default) = the params file's value; a non-empty argument overrides the params file. params_file defaults to
the installed config/encoder.yaml. With shards empty in both, the node uses the installed
share/rk_siglip_ros/shards/default.

dds_config: large_images (the default) runs the node with the installed config/cyclonedds_large_images.xml (a
larger socket receive buffer, so raw 1080p frames are not lost; see docs/node.md) in front of any CYCLONEDDS_URI
you already set; none leaves the DDS settings to your environment; a path uses your own Cyclone XML file. Only the
node's process is affected.
"""

import os
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from rk_siglip_ros.node.config import LAUNCH_ARGUMENTS, NODE_NAME, PACKAGE, launch_overrides
from rk_siglip_ros.node.dds import DDS_CONFIG_CHOICES, LARGE_IMAGES, node_environment


def node_with_overrides(context: object) -> list:
    """The node, with the launch arguments the user set layered over the params file."""
    def argument(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    parameters: list = [argument("params_file")]
    overrides = launch_overrides({name: argument(name) for name in LAUNCH_ARGUMENTS})
    if overrides:
        parameters.append(overrides)
    config_dir = Path(get_package_share_directory(PACKAGE)) / "config"
    dds_environment = node_environment(argument("dds_config"), config_dir, os.environ)
    return [Node(package=PACKAGE, executable="encoder_node", name=NODE_NAME, output="screen", emulate_tty=True,
                 parameters=parameters, additional_env=dds_environment)]


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
                              description="sequential|pipeline|replicas|allcores; empty = from params_file"),
        DeclareLaunchArgument("dds_config", default_value=LARGE_IMAGES,
                              description=f"{'|'.join(DDS_CONFIG_CHOICES)}|<path of a Cyclone DDS XML file>: the "
                                          "node's DDS settings (large_images: a receive buffer big enough for raw "
                                          "1080p frames; none: the environment's CYCLONEDDS_URI only)"),
        DeclareLaunchArgument("params_file", default_value=str(share / "config" / "encoder.yaml"),
                              description="Node parameters (YAML)"),
        OpaqueFunction(function=node_with_overrides),
    ])
