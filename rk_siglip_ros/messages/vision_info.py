"""Model identity <-> ``vision_msgs/msg/VisionInfo``: which model and shard set made a topic's embeddings.

The node publishes one, latched (transient_local), on ``siglip/vision_info``; ``encode_bag`` writes the same into
its output bag beside the embedding topic (``/siglip/embeddings`` -> ``/siglip/vision_info``). The fields, a
documented convention that any consumer can read without this package:

- ``method``: ``<checkpoint> manifest-sha256:<64 hex> architecture:<siglip|smolvlm> embedding_dim:<D>
  embedding:<pooled|token_mean>``. The checkpoint is everything before `` manifest-sha256:`` (a folder name may
  hold spaces); ``embedding`` says how the vector is made: ``pooled`` = SigLIP's attention-pooling head (comparable
  with the text tower's embeddings), ``token_mean`` = the mean of the patch tokens (SmolVLM's tower, no head).
- ``database_location``: the shard set folder, as the publisher sees it.
- ``database_version``: a non-zero int32 derived from the manifest's content hash (same shard set, same number).

Two embeddings are comparable when checkpoint, architecture and width agree
(:func:`rk_siglip_ros.model_identity.check_same_model`); the hash and version name the exact shard set on top.
ROS-free: the node fills rclpy's VisionInfo from :func:`vision_info_fields`, the bag tools build a rosbags message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rosbags.typesys import get_types_from_msg

from rk_siglip_ros.errors import UserError
from rk_siglip_ros.manifest import Manifest

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

VISION_INFO_MSG_TYPE = "vision_msgs/msg/VisionInfo"
VISION_INFO_DEFINITION = "std_msgs/Header header\nstring method\nstring database_location\nint32 database_version\n"
VISION_INFO_NAME = "vision_info"
POOLED, TOKEN_MEAN = "pooled", "token_mean"
METHOD_PATTERN = re.compile(r"^(?P<checkpoint>.+) manifest-sha256:(?P<manifest_sha256>[0-9a-f]{64}) "
                            r"architecture:(?P<architecture>\S+) embedding_dim:(?P<embedding_dim>[1-9]\d*) "
                            r"embedding:(?P<embedding>\S+)$")


class Identity(Protocol):
    """What :class:`~rk_siglip_ros.model_identity.ModelIdentity` provides (not imported: same stage)."""

    checkpoint: str
    architecture: str
    embedding_dim: int
    manifest_sha256: str

    @property
    def method(self) -> str: ...

    @property
    def database_version(self) -> int: ...


class VisionInfoError(UserError, ValueError):
    """A VisionInfo that does not follow the convention above (another publisher's, or damaged)."""


@dataclass(frozen=True)
class VisionInfoContent:
    """What a VisionInfo of this package says, parsed."""

    checkpoint: str
    manifest_sha256: str
    architecture: str
    embedding_dim: int
    embedding: str  # POOLED | TOKEN_MEAN
    shards: str
    database_version: int

    def identity_fields(self) -> dict[str, Any]:
        """``ModelIdentity(**content.identity_fields())``: the model identity it names."""
        return {"checkpoint": self.checkpoint, "architecture": self.architecture,
                "embedding_dim": self.embedding_dim, "manifest_sha256": self.manifest_sha256}


def embedding_kind(manifest: Manifest) -> str:
    """``pooled`` when the shard set ends in the pooling head, ``token_mean`` when the host averages the tokens."""
    return POOLED if manifest.outputs.get("pooled") is not None else TOKEN_MEAN


def vision_info_topic(embedding_topic: str) -> str:
    """The VisionInfo topic beside an embedding topic: ``/siglip/embeddings`` -> ``/siglip/vision_info``."""
    parent = embedding_topic.rstrip("/").rpartition("/")[0]
    return f"{parent}/{VISION_INFO_NAME}" if parent or embedding_topic.startswith("/") else VISION_INFO_NAME


def vision_info_fields(identity: Identity, embedding: str, shards: str) -> dict[str, Any]:
    """``method``, ``database_location`` and ``database_version`` of the VisionInfo for ``identity``."""
    method = (f"{identity.method} architecture:{identity.architecture} embedding_dim:{identity.embedding_dim} "
              f"embedding:{embedding}")
    return {"method": method, "database_location": str(shards), "database_version": int(identity.database_version)}


def parse_vision_info(method: str, database_location: str, database_version: int) -> VisionInfoContent:
    """The content of a VisionInfo's fields; VisionInfoError (one line) when ``method`` does not follow the
    convention (the caller checks ``database_version`` against the identity: see ModelIdentity.database_version)."""
    match = METHOD_PATTERN.match(method.strip())
    if match is None:
        raise VisionInfoError(f"VisionInfo method {method[:120]!r} is not rk_siglip_ros's `<checkpoint> "
                              "manifest-sha256:<hash> architecture:<a> embedding_dim:<d> embedding:<kind>`; "
                              "it was published by something else")
    if not database_version:
        raise VisionInfoError("VisionInfo database_version is 0: rk_siglip_ros never publishes 0")
    return VisionInfoContent(checkpoint=match["checkpoint"], manifest_sha256=match["manifest_sha256"],
                             architecture=match["architecture"], embedding_dim=int(match["embedding_dim"]),
                             embedding=match["embedding"], shards=database_location,
                             database_version=int(database_version))


def register_vision_info(store: Typestore) -> None:
    """Add vision_msgs' VisionInfo (as ROS 2 Humble ships it) to ``store`` unless it has it already."""
    if VISION_INFO_MSG_TYPE not in store.fielddefs:
        store.register(get_types_from_msg(VISION_INFO_DEFINITION, VISION_INFO_MSG_TYPE))


def vision_info_message(store: Typestore, header: Any, fields: dict[str, Any]) -> Any:
    """A rosbags VisionInfo with ``header`` and :func:`vision_info_fields`' fields."""
    return store.types[VISION_INFO_MSG_TYPE](header=header, **fields)
