"""The index's tables and columns, and the model identity recorded with them.

``frames``: one row per encoded camera frame. ``bags``: one row per bag, the marker that says whether all of a bag's
frame rows are in (``state`` ``done``) or a run stopped between writing them and saying so (``writing``). The model
identity (checkpoint, architecture, width, shard-set hash) sits in the frames table's schema metadata, so an index
says which model made it without any row, and on every row, so a row says it alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from rk_siglip_ros.model_identity import ModelIdentity

FRAMES_TABLE = "frames"
BAGS_TABLE = "bags"
INDEX_FORMAT = 1  # of these tables; bumped when a column changes meaning
META_FORMAT = b"rk_siglip_ros.index_format"
META_IDENTITY = b"rk_siglip_ros.model_identity"
META_SHARDS = b"rk_siglip_ros.shards"  # the shard folder that built the index: search_index's default text tower
STATE_WRITING, STATE_DONE = "writing", "done"
SOURCE_ENCODED, SOURCE_EMBEDDINGS = "encoded", "embeddings"  # frames encoded here, or encode_bag's embeddings taken


@dataclass
class FrameRow:
    """One frame of a bag, before it has the bag's and the model's columns."""

    vector: np.ndarray  # (D,) float32, unit length
    topic: str  # the image topic ("" when an embedding's frame is not in the bag)
    stamp_ns: int  # header stamp, ns since the epoch
    frame_id: str
    msg_index: int  # position of the image message among its topic's messages (-1: not in the bag)
    log_time_ns: int
    thumbnail: bytes  # JPEG, b"" when there is no image


@dataclass
class BagRows:
    """Everything one bag contributes: its identity, its rows, and the frames it could not use."""

    path: str
    fingerprint: str
    source: str  # SOURCE_ENCODED | SOURCE_EMBEDDINGS
    rows: list[FrameRow]
    skipped: int = 0  # frames that did not decode, or that the encoder gave no usable embedding for
    note: str = ""  # said once with the bag's line (e.g. why its embeddings were not taken)


def frames_schema(identity: ModelIdentity, shards: str) -> pa.Schema:
    fields = [
        pa.field("vector", pa.list_(pa.float32(), identity.embedding_dim)),
        pa.field("bag_path", pa.string()),
        pa.field("bag_fingerprint", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("stamp_ns", pa.int64()),
        pa.field("frame_id", pa.string()),
        pa.field("msg_index", pa.int64()),
        pa.field("log_time_ns", pa.int64()),
        pa.field("thumbnail", pa.binary()),
        pa.field("checkpoint", pa.string()),
        pa.field("manifest_sha256", pa.string()),
    ]
    metadata = {META_FORMAT: str(INDEX_FORMAT).encode(), META_IDENTITY: json.dumps(asdict(identity)).encode(),
                META_SHARDS: shards.encode()}
    return pa.schema(fields, metadata=metadata)


BAGS_SCHEMA = pa.schema([
    pa.field("bag_fingerprint", pa.string()),
    pa.field("bag_path", pa.string()),
    pa.field("state", pa.string()),
    pa.field("source", pa.string()),
    pa.field("frames", pa.int64()),
    pa.field("skipped", pa.int64()),
])


def identity_of(schema: pa.Schema) -> ModelIdentity | None:
    """The identity a frames table records (None: not a table this package wrote)."""
    raw = (schema.metadata or {}).get(META_IDENTITY)
    return ModelIdentity(**json.loads(raw)) if raw else None


def shards_of(schema: pa.Schema) -> str:
    return (schema.metadata or {}).get(META_SHARDS, b"").decode()


def frames_table(bag: BagRows, identity: ModelIdentity, schema: pa.Schema) -> pa.Table:
    """A bag's rows as one Arrow table of ``schema`` (written in one commit)."""
    count = len(bag.rows)
    vectors = np.stack([row.vector for row in bag.rows]).astype(np.float32) if count else \
        np.zeros((0, identity.embedding_dim), np.float32)
    columns = {
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()),
                                                    identity.embedding_dim),
        "bag_path": pa.array([bag.path] * count, pa.string()),
        "bag_fingerprint": pa.array([bag.fingerprint] * count, pa.string()),
        "topic": pa.array([row.topic for row in bag.rows], pa.string()),
        "stamp_ns": pa.array([row.stamp_ns for row in bag.rows], pa.int64()),
        "frame_id": pa.array([row.frame_id for row in bag.rows], pa.string()),
        "msg_index": pa.array([row.msg_index for row in bag.rows], pa.int64()),
        "log_time_ns": pa.array([row.log_time_ns for row in bag.rows], pa.int64()),
        "thumbnail": pa.array([row.thumbnail for row in bag.rows], pa.binary()),
        "checkpoint": pa.array([identity.checkpoint] * count, pa.string()),
        "manifest_sha256": pa.array([identity.manifest_sha256] * count, pa.string()),
    }
    return pa.table(columns, schema=schema)


__all__ = ["BAGS_SCHEMA", "BAGS_TABLE", "FRAMES_TABLE", "INDEX_FORMAT", "SOURCE_EMBEDDINGS", "SOURCE_ENCODED",
           "STATE_DONE", "STATE_WRITING", "BagRows", "FrameRow", "frames_schema", "frames_table", "identity_of",
           "shards_of"]
