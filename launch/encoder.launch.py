"""Start the SigLIP encoder node.

    ros2 launch rk_siglip_ros encoder.launch.py
    ros2 launch rk_siglip_ros encoder.launch.py image_topics:="[/cam0/image_raw, /cam1/image_raw/compressed]"
    ros2 launch rk_siglip_ros encoder.launch.py shards:=/data/shards/siglip-b16-512 backend:=rknnlite mode:=pipeline

Arguments: shards (default: the installed share/rk_siglip_ros/shards/default), image_topics (a list "[/a, /b]",
or comma- or space-separated "/a,/b"; empty = the params file's), backend and mode (empty = the params file's),
params_file (default: the installed config/encoder.yaml). Non-empty arguments override the params file.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from rk_siglip_ros.node_config import NODE_NAME, PACKAGE, default_shards_dir, parse_topic_list


def node_with_overrides(context: object) -> list:
    """The node, with the launch arguments the user set layered over the params file."""
    def argument(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    overrides: dict = {"shards": argument("shards")}
    topics = parse_topic_list(argument("image_topics"))
    if topics:
        overrides["image_topics"] = topics
    for name in ("backend", "mode"):
        if argument(name):
            overrides[name] = argument(name)
    return [Node(package=PACKAGE, executable="encoder_node", name=NODE_NAME, output="screen", emulate_tty=True,
                 parameters=[argument("params_file"), overrides])]


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory(PACKAGE))
    return LaunchDescription([
        DeclareLaunchArgument("shards", default_value=str(default_shards_dir(share)),
                              description="Shard set folder (build one with build_shards)"),
        DeclareLaunchArgument("image_topics", default_value="",
                              description='Camera topics, e.g. "[/cam0/image_raw, /cam1/image_raw/compressed]"; '
                                          "empty = from params_file"),
        DeclareLaunchArgument("backend", default_value="",
                              description="auto|onnxruntime|rknnlite|sim; empty = from params_file"),
        DeclareLaunchArgument("mode", default_value="",
                              description="sequential|pipeline|replicas; empty = from params_file"),
        DeclareLaunchArgument("params_file", default_value=str(share / "config" / "encoder.yaml"),
                              description="Node parameters (YAML)"),
        OpaqueFunction(function=node_with_overrides),
    ])
