"""Labels <-> ``vision_msgs/msg/Classification``, for the bag tools (no rclpy import; the node builds the message
with rclpy's own classes from the same (label, probability) pairs).

A frame's labels travel as a standard Classification: ``header`` = the camera frame's, ``results`` =
``ObjectHypothesis(class_id=<label text>, score=<probability>)``, most probable first. vision_msgs is not part of
rosbags' built-in typestores, so :func:`register_classification` adds its two definitions (as ROS 2 Humble ships
them) to a typestore; the bag then carries them and ``ros2 bag info`` / rosbags read it anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rosbags.typesys import get_types_from_msg

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

LABELS_TOPIC = "/siglip/labels"
CLASSIFICATION_MSG_TYPE = "vision_msgs/msg/Classification"
OBJECT_HYPOTHESIS_MSG_TYPE = "vision_msgs/msg/ObjectHypothesis"
DEFINITIONS = {
    OBJECT_HYPOTHESIS_MSG_TYPE: "string class_id\nfloat64 score\n",
    CLASSIFICATION_MSG_TYPE: "std_msgs/Header header\nObjectHypothesis[] results\n",
}


def register_classification(store: Typestore) -> None:
    """Add vision_msgs' ObjectHypothesis and Classification to ``store`` unless it has them (from a bag) already."""
    types: dict[str, Any] = {}
    for name, text in DEFINITIONS.items():
        if name not in store.fielddefs:
            types.update(get_types_from_msg(text, name))
    if types:
        store.register(types)


def classification(store: Typestore, header: Any, results: Sequence[tuple[str, float]]) -> Any:
    """A rosbags Classification message with ``header`` and the (label, probability) pairs in order."""
    hypothesis = store.types[OBJECT_HYPOTHESIS_MSG_TYPE]
    return store.types[CLASSIFICATION_MSG_TYPE](
        header=header, results=[hypothesis(class_id=label, score=float(score)) for label, score in results])


def results_of(message: Any) -> list[tuple[str, float]]:
    """The (label, probability) pairs of a Classification message (rosbags or rclpy), in order."""
    return [(str(item.class_id), float(item.score)) for item in message.results]
