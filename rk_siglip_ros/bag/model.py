"""Which model made a bag's embeddings, from the VisionInfo beside them, and the refusal to compare another model's.

``encode_bag`` writes a ``vision_msgs/VisionInfo`` beside its embedding topic; a bag recorded from the node holds
the node's latched one (``ros2 bag record`` keeps transient_local topics). ``search_bag`` and ``encode_text
--for-bag`` read it and refuse, in one line, to compare the bag's embeddings with those of another model.
"""

from __future__ import annotations

from pathlib import Path

from rk_siglip_ros.bag.errors import BagError
from rk_siglip_ros.bag.io import OpenBag
from rk_siglip_ros.errors import one_line
from rk_siglip_ros.manifest import MANIFEST_NAME, Manifest
from rk_siglip_ros.messages.vision_info import (
    VISION_INFO_MSG_TYPE,
    VisionInfoContent,
    parse_vision_info,
    register_vision_info,
    vision_info_topic,
)
from rk_siglip_ros.model_identity import ModelIdentity, ModelMismatchError, check_same_model


def bag_vision_info(bag: OpenBag, embedding_topic: str) -> VisionInfoContent | None:
    """The model the VisionInfo beside ``embedding_topic`` names; None when the bag has none. ModelMismatchError when
    its VisionInfo messages name different models (two runs recorded into one bag), BagError when one is unreadable."""
    topic = vision_info_topic(embedding_topic)
    connections = [c for c in bag.reader.connections if c.topic == topic and c.msgtype == VISION_INFO_MSG_TYPE]
    if not connections:
        return None
    register_vision_info(bag.typestore)
    found: list[VisionInfoContent] = []
    for connection, _, raw in bag.reader.messages(connections):
        try:
            message = bag.typestore.deserialize_cdr(raw, connection.msgtype)
        except Exception as error:  # noqa: BLE001 - any corrupt payload: one line naming the topic
            raise BagError(f"the bag's {topic} holds an unreadable VisionInfo ({one_line(error)})") from None
        found.append(parse_vision_info(message.method, message.database_location, message.database_version))
    first = ModelIdentity(**found[0].identity_fields())
    for content in found[1:]:
        other = ModelIdentity(**content.identity_fields())
        if not first.same_model(other):
            raise ModelMismatchError(f"the bag's {topic} names two models, {first.describe()} and "
                                     f"{other.describe()}: its embeddings cannot be compared with each other; "
                                     "split the bag by run")
    return found[0] if found else None


def check_bag_model(content: VisionInfoContent | None, manifest: Manifest, embedding_topic: str) -> None:
    """ModelMismatchError (one line) when the bag's VisionInfo (:func:`bag_vision_info`) names another model than
    ``manifest``'s; nothing to check without one."""
    if content is not None:
        check_same_model(ModelIdentity.of(manifest), ModelIdentity(**content.identity_fields()),
                         f"the bag's embeddings ({embedding_topic})")


def recorded_shards(content: VisionInfoContent | None) -> Path | None:
    """The shard set the VisionInfo names, when it is on this machine (a bag recorded here, or encoded here)."""
    if content is None or not content.shards:
        return None
    path = Path(content.shards)
    return path if (path / MANIFEST_NAME).is_file() else None
