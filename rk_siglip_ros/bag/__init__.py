"""rosbag2 tools, ROS-free: :mod:`.io` reads bags, :mod:`.output` writes them safely, :mod:`.replay` runs a bag
through the encoder (``encode_bag``), :mod:`.summary` reports what a replay did."""

from rk_siglip_ros.bag.errors import BagError
from rk_siglip_ros.bag.io import TYPESTORES, OpenBag, image_connections, merged_typestore, open_bag
from rk_siglip_ros.bag.output import STORAGES, check_output, staged_output
from rk_siglip_ros.bag.replay import EMBEDDING_MSG_TYPE, EMBEDDING_TOPIC, ReplayPlan, check_request, encode_bag, replay
from rk_siglip_ros.bag.summary import ReplaySummary, SkippedFrame, format_summary
from rk_siglip_ros.errors import one_line

__all__ = [
    "EMBEDDING_MSG_TYPE", "EMBEDDING_TOPIC", "STORAGES", "TYPESTORES", "BagError", "OpenBag", "ReplayPlan",
    "ReplaySummary", "SkippedFrame", "check_output", "check_request", "encode_bag", "format_summary",
    "image_connections", "merged_typestore", "one_line", "open_bag", "replay", "staged_output",
]
