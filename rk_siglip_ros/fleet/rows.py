"""One bag -> its index rows: frames encoded here, or the embeddings ``encode_bag`` already wrote into it.

An ``encode_bag`` output whose metadata names the same checkpoint and width is not encoded again: its embeddings
are taken as they are (normalised as ``search_bag`` reads them), each matched to its camera frame by header stamp and
frame_id for the thumbnail, topic and message index. Any other bag's image topics are encoded, keeping up to
``encoder.capacity`` frames in flight as ``encode_bag`` does. Frames that do not decode, or that the encoder gives no
usable embedding for, are counted and skipped.

Used alike in-process and inside a Ray worker (:mod:`.distributed`), so both make the same rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rk_siglip_ros.bag.errors import BagError
from rk_siglip_ros.bag.io import FrameKey, OpenBag, header_or_none, image_connections, open_bag
from rk_siglip_ros.bag.model import bag_vision_info
from rk_siglip_ros.bag.replay import EMBEDDING_MSG_TYPE, EMBEDDING_TOPIC, META_EMBEDDING_TOPIC, META_MODEL
from rk_siglip_ros.bag.sampling import FrameSampler
from rk_siglip_ros.bag.search import custom_data, read_embeddings
from rk_siglip_ros.errors import one_line
from rk_siglip_ros.fleet.fingerprint import fingerprint
from rk_siglip_ros.fleet.schema import SOURCE_EMBEDDINGS, SOURCE_ENCODED, BagRows, FrameRow
from rk_siglip_ros.fleet.thumbnails import THUMBNAIL_SIDE, thumbnail_jpeg
from rk_siglip_ros.messages.camera_frames import IMAGE_MSG_TYPES, BadFrame, image_from_message
from rk_siglip_ros.messages.image_header import DEFAULT_MAX_IMAGE_PIXELS
from rk_siglip_ros.model_identity import ModelIdentity, ModelMismatchError
from rk_siglip_ros.runtime.encoder import EncoderOutputError
from rk_siglip_ros.runtime.postprocess import l2_normalise_rows

if TYPE_CHECKING:
    from rk_siglip_ros.runtime.encoder import EncodeResult, SiglipEncoder

FrameCallback = Callable[[int], object]  # called with a count of frames done (a progress bar's update)


@dataclass(frozen=True)
class Sampling:
    """Which frames of a bag become rows."""

    every_s: float = 0.0  # at most one frame per topic every this many seconds (0: all)
    topics: tuple[str, ...] | None = None  # image topics (None: every image topic)
    thumbnail_side: int = THUMBNAIL_SIDE
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class _Pending:
    future: Future[EncodeResult]
    row: FrameRow


def bag_rows(path: str | Path, encoder: SiglipEncoder, identity: ModelIdentity, sampling: Sampling,
             on_frames: FrameCallback | None = None, bag_fingerprint: str | None = None) -> BagRows:
    """The rows of the bag at ``path``; BagError when it is not a bag this can read."""
    path = Path(path)
    digest = bag_fingerprint or fingerprint(path)
    done = on_frames or (lambda count: None)
    with open_bag(path) as bag:
        note = ""
        if _has_embeddings(bag):
            reason = _embeddings_unusable(bag, identity)
            if reason is None:
                return _rows_from_embeddings(bag, str(path), digest, sampling, done)
            note = f"its embeddings are not taken ({reason}): its frames are encoded again"
        rows = _rows_from_frames(bag, str(path), digest, encoder, sampling, done)
        rows.note = note
        return rows


def frames_in(path: str | Path, sampling: Sampling) -> int:
    """How many image messages the bag's chosen topics hold (before sampling): a progress bar's total; 0 when the
    bag cannot be read (the encoding says why)."""
    try:
        with open_bag(path) as bag:
            return sum(c.msgcount for c in image_connections(bag.reader.connections, sampling.topics,
                                                              exclude=(_embedding_topic(bag),)))
    except BagError:
        return 0


# ------------------------------------------------------------------------------------------------ embeddings


def _embedding_topic(bag: OpenBag) -> str:
    return custom_data(bag.reader).get(META_EMBEDDING_TOPIC) or EMBEDDING_TOPIC


def _has_embeddings(bag: OpenBag) -> bool:
    topic = _embedding_topic(bag)
    return any(c.topic == topic and c.msgtype == EMBEDDING_MSG_TYPE for c in bag.reader.connections)


def _embeddings_unusable(bag: OpenBag, identity: ModelIdentity) -> str | None:
    """Why the bag's embeddings cannot go into an index of ``identity``'s model (None: they can). The VisionInfo
    beside them says which model made them (encode_bag writes it, a recording of the node holds the node's); an
    older encode_bag output says it in its metadata only."""
    try:
        content = bag_vision_info(bag, _embedding_topic(bag))
    except (BagError, ModelMismatchError) as error:  # two models in one bag, or an unreadable VisionInfo
        return one_line(error)
    if content is not None:
        recorded = ModelIdentity(**content.identity_fields())
        return None if recorded.same_model(identity) else \
            f"made by {recorded.describe()}, the index holds {identity.describe()}"
    checkpoint = custom_data(bag.reader).get(META_MODEL)
    if checkpoint is None:
        return "the bag does not say which model made them"
    if checkpoint != identity.checkpoint:
        return f"made by {checkpoint}, the index holds {identity.checkpoint}"
    return None


def _rows_from_embeddings(bag: OpenBag, path: str, digest: str, sampling: Sampling,
                          done: FrameCallback) -> BagRows:
    embeddings = read_embeddings(bag)
    frames = _camera_frames(bag, {frame.key for frame in embeddings.frames}, embeddings.topic, sampling)
    sampler = FrameSampler(sampling.every_s)
    rows = []
    for vector, frame in zip(embeddings.matrix, embeddings.frames, strict=True):
        topic, index, log_time, thumbnail = frames.get(frame.key, ("", -1, 0, b""))
        stamp = frame.sec * 1_000_000_000 + frame.nanosec
        if not sampler.keep(topic, stamp, log_time):
            continue
        rows.append(FrameRow(vector, topic, stamp, frame.frame_id, index, log_time, thumbnail))
    done(len(embeddings.frames))
    return BagRows(path, digest, SOURCE_EMBEDDINGS, rows, skipped=embeddings.unreadable)


def _camera_frames(bag: OpenBag, keys: set[FrameKey], embedding_topic: str,
                   sampling: Sampling) -> dict[FrameKey, tuple[str, int, int, bytes]]:
    """(topic, message index, log time, thumbnail) of the camera frames whose header is in ``keys``."""
    found: dict[FrameKey, tuple[str, int, int, bytes]] = {}
    connections = [c for c in bag.reader.connections if c.msgtype in IMAGE_MSG_TYPES and c.topic != embedding_topic]
    counters: dict[str, int] = {}
    for connection, log_time, raw in bag.reader.messages(connections):
        index = counters.get(connection.topic, 0)
        counters[connection.topic] = index + 1
        key = header_or_none(raw)
        if key is None or key not in keys or key in found:
            continue
        try:
            image = image_from_message(bag.typestore.deserialize_cdr(raw, connection.msgtype),
                                       sampling.max_image_pixels)
            thumbnail = thumbnail_jpeg(image, sampling.thumbnail_side)
        except Exception:  # noqa: BLE001 - a frame that does not decode keeps its row, without a thumbnail
            thumbnail = b""
        found[key] = (connection.topic, index, log_time, thumbnail)
    return found


# ------------------------------------------------------------------------------------------------ encoding


def _rows_from_frames(bag: OpenBag, path: str, digest: str, encoder: SiglipEncoder, sampling: Sampling,
                      done: FrameCallback) -> BagRows:
    chosen = image_connections(bag.reader.connections, sampling.topics, exclude=(_embedding_topic(bag),))
    result = BagRows(path, digest, SOURCE_ENCODED, [])
    sampler = FrameSampler(sampling.every_s)
    window = max(1, int(encoder.capacity))
    pending: deque[_Pending] = deque()
    counters: dict[str, int] = {}

    def finish_one() -> None:
        item = pending.popleft()
        try:
            vector = item.future.result().embedding
        except EncoderOutputError:
            result.skipped += 1
        else:
            item.row.vector = l2_normalise_rows(np.asarray(vector, np.float32)[None])[0]
            result.rows.append(item.row)
        done(1)

    for connection, log_time, raw in bag.reader.messages(chosen):
        index = counters.get(connection.topic, 0)
        counters[connection.topic] = index + 1
        key = header_or_none(raw)
        stamp = key[0] * 1_000_000_000 + key[1] if key else 0
        if key is None or not sampler.keep(connection.topic, stamp, log_time):
            result.skipped += key is None
            done(1)
            continue
        while pending and (len(pending) >= window or pending[0].future.done()):
            finish_one()
        row = FrameRow(np.zeros(0, np.float32), connection.topic, stamp, key[2], index, log_time, b"")
        try:
            image = image_from_message(bag.typestore.deserialize_cdr(raw, connection.msgtype),
                                       sampling.max_image_pixels)
            row.thumbnail = thumbnail_jpeg(image, sampling.thumbnail_side)
            pending.append(_Pending(encoder.submit(image), row))
        except (BadFrame, ValueError, KeyError, AssertionError, IndexError) as error:
            del error  # the frame is counted, not the reason: a bag's line says how many were skipped
            result.skipped += 1
            done(1)
    while pending:
        finish_one()
    return result
