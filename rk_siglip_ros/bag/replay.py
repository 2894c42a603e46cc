"""Offline replay: a rosbag2 in, the same bag plus one embedding per camera frame out.

ROS-free (rosbags reads and writes the bag), so it runs on a laptop, in CI, or on the robot without a sourced ROS
environment. The flow is one pass over the input in log order:

- every message of every connection is copied through byte for byte (same topic, type, definition, QoS);
- image messages on the chosen topics are decoded (:func:`camera_frames.image_from_message`) and submitted to the
  encoder, keeping up to ``encoder.capacity`` frames in flight so every core stays busy while the next frame is
  decoded; results come back in submission order and are written to the embedding topic as ``sensor_msgs/Image``
  32FC1 (:func:`embedding_msg.embedding_fields`), header = the source header, log time = the source log time;
- with labels (a :class:`~rk_siglip_ros.text.LabelSet`), each embedding's top-k labels go to the labels topic as
  ``vision_msgs/Classification`` (:mod:`labels_msg`), same header and log time;
- frames that cannot be decoded are counted with their reason and skipped; the run continues.

``metadata.yaml`` records which shard set made the embeddings (custom_data ``rk_siglip_ros.*``), so ``search_bag``
can find it again and refuse embeddings from another one.

Output is written to a hidden temporary folder beside OUT and renamed into place only when the bag is complete,
so an interrupted or failed run never leaves an OUT that looks finished.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Writer, WriterError

from rk_siglip_ros.bag.errors import BagError
from rk_siglip_ros.bag.io import (
    OpenBag,
    connection_definition,
    connection_qos,
    header_or_none,
    image_connections,
    open_bag,
)
from rk_siglip_ros.bag.output import STORAGES, check_output, staged_output
from rk_siglip_ros.bag.sampling import FrameSampler
from rk_siglip_ros.bag.summary import ReplaySummary, SkippedFrame, progress_bar
from rk_siglip_ros.errors import one_line
from rk_siglip_ros.manifest import MANIFEST_NAME, file_sha256
from rk_siglip_ros.messages.camera_frames import IMAGE_MSG_TYPES, BadFrame, image_from_message
from rk_siglip_ros.messages.embedding_msg import embedding_fields
from rk_siglip_ros.messages.image_header import DEFAULT_MAX_IMAGE_PIXELS
from rk_siglip_ros.messages.labels_msg import (
    CLASSIFICATION_MSG_TYPE,
    LABELS_TOPIC,
    classification,
    register_classification,
)
from rk_siglip_ros.messages.vision_info import (
    VISION_INFO_MSG_TYPE,
    embedding_kind,
    register_vision_info,
    vision_info_fields,
    vision_info_message,
    vision_info_topic,
)
from rk_siglip_ros.model_identity import ModelIdentity
from rk_siglip_ros.runtime.encoder import EncoderOutputError

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

    from rk_siglip_ros.runtime.encoder import EncodeResult, SiglipEncoder
    from rk_siglip_ros.text import LabelSet

EMBEDDING_TOPIC = "/siglip/embeddings"
EMBEDDING_MSG_TYPE = IMAGE_MSG_TYPES[0]  # sensor_msgs/msg/Image, 32FC1 (embedding_msg.embedding_fields)
DEFAULT_TOP_K = 5
# metadata.yaml custom_data keys: what made the embeddings (search_bag reads them back).
META_MODEL = "rk_siglip_ros.model"  # the checkpoint the shard set was built from (manifest model.source)
META_SHARDS = "rk_siglip_ros.shards"  # the shard folder, resolved
META_MANIFEST_SHA256 = "rk_siglip_ros.manifest_sha256"  # identifies the shard set (its manifest.json)
META_EMBEDDING_DIM = "rk_siglip_ros.embedding_dim"
META_EMBEDDING_TOPIC = "rk_siglip_ros.embedding_topic"
META_LABELS = "rk_siglip_ros.labels"  # JSON list
META_LABELS_TOPIC = "rk_siglip_ros.labels_topic"
# The VisionInfo beside the embeddings is recorded as the node offers it: latched, so `ros2 bag play` republishes it
# to late subscribers too. rosbag2's "infinite" duration (its default deadline, lifespan and lease).
_FOREVER = QosTime(sec=2147483647, nsec=4294967295)
LATCHED_QOS = Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
                  durability=QosDurability.TRANSIENT_LOCAL, deadline=_FOREVER, lifespan=_FOREVER,
                  liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_FOREVER,
                  avoid_ros_namespace_conventions=False)


# One unusable encoder output (NaN/inf, wrong width) costs that frame, as in the node; this many in a row point at
# the shard set or the NPU rather than at the frames, and end the run instead of grinding through the whole bag.
MAX_UNUSABLE_OUTPUTS_IN_A_ROW = 10


@dataclass
class _Pending:
    future: Future[EncodeResult]
    header: Any
    log_time_ns: int
    topic: str


@dataclass
class ReplayPlan:
    """A checked encode_bag request, with the input bag open: :func:`check_request` makes it, :func:`replay` runs it.

    Close it (or use it in a ``with`` block) when done; closing closes the input bag.
    """

    bag: OpenBag
    output: Path
    storage: str  # of the output
    embedding_topic: str
    chosen: list[Connection]  # the image connections to encode
    _resources: ExitStack = field(repr=False)
    labels: LabelSet | None = None  # scored on every embedding and written to labels_topic when set
    labels_topic: str = LABELS_TOPIC
    labels_top_k: int = DEFAULT_TOP_K
    every_s: float = 0.0  # at most one frame per topic every this many seconds of header time (0: every frame)

    @property
    def image_topics(self) -> list[str]:
        return sorted({c.topic for c in self.chosen})

    def close(self) -> None:
        self._resources.close()

    def __enter__(self) -> ReplayPlan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_request(in_path: str | Path, out_path: str | Path, *, topics: Sequence[str] | None = None,
                  storage: str | None = None, typestore: str = "auto", embedding_topic: str = EMBEDDING_TOPIC,
                  force: bool = False, labels_topic: str | None = None) -> ReplayPlan:
    """Every check :func:`encode_bag` makes before it needs the encoder, each done once; raises BagError.

    ``labels_topic``: labels will be written there (set ``plan.labels`` before :func:`replay`).

    Returns the plan :func:`replay` carries out, holding the input bag open. The CLI calls it first so a bad request
    fails before the (slower) encoder starts.
    """
    if storage is not None and storage not in STORAGES:
        raise BagError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
    check_output(in_path, out_path, force)
    resources = ExitStack()
    try:
        bag = resources.enter_context(open_bag(in_path, typestore))
        for written in (embedding_topic, vision_info_topic(embedding_topic)):
            if any(c.topic == written for c in bag.reader.connections):
                raise BagError(f"the input already has {written}; pass --embedding-topic to write elsewhere")
        if labels_topic is not None:
            if labels_topic == embedding_topic:
                raise BagError(f"--labels-topic {labels_topic} is the embedding topic; choose another")
            if any(c.topic == labels_topic for c in bag.reader.connections):
                raise BagError(f"the input already has {labels_topic}; pass --labels-topic to write elsewhere")
        chosen = image_connections(bag.reader.connections, topics, exclude=(embedding_topic,))
    except BaseException:
        resources.close()
        raise
    plan = ReplayPlan(bag, Path(out_path), storage or bag.storage, embedding_topic, chosen, resources)
    if labels_topic is not None:
        plan.labels_topic = labels_topic
    return plan


def encode_bag(in_path: str | Path, out_path: str | Path, encoder: SiglipEncoder, *,
               topics: Sequence[str] | None = None, storage: str | None = None, typestore: str = "auto",
               embedding_topic: str = EMBEDDING_TOPIC, force: bool = False, progress: bool = False,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, labels: LabelSet | None = None,
               labels_topic: str = LABELS_TOPIC, labels_top_k: int = DEFAULT_TOP_K,
               every_s: float = 0.0) -> ReplaySummary:
    """Replay ``in_path`` through ``encoder`` into a new bag at ``out_path``; see the module docstring.
    ``every_s``: encode at most one frame per topic every this many seconds of header time (0: every frame).

    :func:`check_request` then :func:`replay`, for callers that already have an encoder (and, for labels, a
    LabelSet from the same shard set's text tower).
    """
    with check_request(in_path, out_path, topics=topics, storage=storage, typestore=typestore,
                       embedding_topic=embedding_topic, force=force,
                       labels_topic=labels_topic if labels is not None else None) as plan:
        plan.labels, plan.labels_top_k, plan.every_s = labels, labels_top_k, every_s
        return replay(plan, encoder, progress=progress, max_image_pixels=max_image_pixels)


def replay(plan: ReplayPlan, encoder: SiglipEncoder, progress: bool = False,
           max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ReplaySummary:
    """Carry out a checked request: copy every message through and write one embedding per good frame.

    Frames declaring more than ``max_image_pixels`` (0 = no limit) are skipped before they are decoded."""
    bag = plan.bag
    # Generate the (de)serialisers now: rosbags compiles them on first use with exec(), and a Ctrl-C landing inside
    # exec'd code makes CPython exit by SIGINT even after the interrupt is handled.
    _warm_up(bag.typestore, {c.msgtype for c in plan.chosen})
    summary = ReplaySummary(output=plan.output, storage=plan.storage, typestore=bag.typestore_name,
                            image_topics=plan.image_topics, embedding_topic=plan.embedding_topic,
                            embedding_dim=encoder.embedding_dim,
                            unparsed_definitions=dict(bag.unparsed_definitions), every_s=plan.every_s)
    if plan.labels is not None:
        summary.labels, summary.labels_topic, summary.labels_top_k = (len(plan.labels), plan.labels_topic,
                                                                      plan.labels_top_k)
    started = time.perf_counter()
    with (staged_output(plan.output, summary.removed_stale_outputs) as stage,
          Writer(stage, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[summary.storage]) as writer):
        _record_provenance(writer, encoder, summary, plan)
        _write_vision_info(writer, bag, encoder, plan)
        _replay(bag, list(bag.reader.connections), plan, writer, encoder, summary, progress, max_image_pixels)
    summary.wall_s = time.perf_counter() - started
    return summary


def _record_provenance(writer: Writer, encoder: SiglipEncoder, summary: ReplaySummary, plan: ReplayPlan) -> None:
    """metadata.yaml custom_data: which shard set made the embeddings, so a bag explains itself later and
    search_bag can embed its queries with the same one."""
    manifest = getattr(encoder, "manifest", None)
    if manifest is not None:
        writer.set_custom_data(META_MODEL, str(manifest.model.source))
        writer.set_custom_data("rk_siglip_ros.profile", str(manifest.profile))
        if manifest.root is not None:
            writer.set_custom_data(META_SHARDS, str(manifest.root))
            writer.set_custom_data(META_MANIFEST_SHA256, file_sha256(manifest.root / MANIFEST_NAME))
    writer.set_custom_data(META_EMBEDDING_DIM, str(summary.embedding_dim))
    writer.set_custom_data(META_EMBEDDING_TOPIC, summary.embedding_topic)
    writer.set_custom_data("rk_siglip_ros.image_topics", ",".join(summary.image_topics))
    if plan.labels is not None:
        writer.set_custom_data(META_LABELS, json.dumps(list(plan.labels.labels)))
        writer.set_custom_data(META_LABELS_TOPIC, plan.labels_topic)


def _write_vision_info(writer: Writer, bag: OpenBag, encoder: SiglipEncoder, plan: ReplayPlan) -> None:
    """The VisionInfo the node latches, beside the embedding topic, once, at the bag's start: what a consumer of the
    bag (search_bag, encode_text --for-bag, the user's own code) checks before comparing its embeddings."""
    manifest = getattr(encoder, "manifest", None)
    if manifest is None:  # an encoder without a shard set (a test double): nothing to name
        return
    store = bag.typestore
    register_vision_info(store)
    start_ns = bag.reader.start_time if bag.reader.message_count else 0
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=start_ns // 10**9, nanosec=start_ns % 10**9),
        frame_id="")
    shards = str(manifest.root.resolve()) if manifest.root is not None else ""
    message = vision_info_message(store, header, vision_info_fields(ModelIdentity.of(manifest),
                                                                    embedding_kind(manifest), shards))
    connection = writer.add_connection(vision_info_topic(plan.embedding_topic), VISION_INFO_MSG_TYPE,
                                       typestore=store, offered_qos_profiles=[LATCHED_QOS])
    writer.write(connection, start_ns, store.serialize_cdr(message, VISION_INFO_MSG_TYPE))


def _warm_up(store: Typestore, msgtypes: set[str]) -> None:
    for msgtype in msgtypes | {EMBEDDING_MSG_TYPE}:
        store.get_msgdef(msgtype)
    header = store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                                frame_id="")
    message = store.types[EMBEDDING_MSG_TYPE](header=header, **embedding_fields(np.zeros(1, np.float32)))
    store.deserialize_cdr(store.serialize_cdr(message, EMBEDDING_MSG_TYPE), EMBEDDING_MSG_TYPE)


def _replay(bag: OpenBag, connections: list[Connection], plan: ReplayPlan, writer: Writer,
            encoder: SiglipEncoder, summary: ReplaySummary, progress: bool, max_image_pixels: int) -> None:
    store, chosen, labels = bag.typestore, plan.chosen, plan.labels
    outputs: dict[int, Connection] = {}
    for connection in connections:
        definition = connection_definition(connection, store)
        if definition is None:
            summary.dropped_topics[connection.topic] = (f"type {connection.msgtype} is not defined in the bag nor in "
                                                        f"the {bag.typestore_name} typestore")
            continue
        try:
            outputs[connection.id] = writer.add_connection(
                connection.topic, connection.msgtype, msgdef=definition[0], rihs01=definition[1],
                serialization_format=connection.ext.serialization_format,
                offered_qos_profiles=connection_qos(connection))
        except WriterError:  # the same topic/type/QoS recorded twice (split bags): share one output connection
            outputs[connection.id] = next(o for o in writer.connections if o.topic == connection.topic
                                          and o.msgtype == connection.msgtype)
    embedding_out = writer.add_connection(summary.embedding_topic, EMBEDDING_MSG_TYPE, typestore=store)
    labels_out = None
    if labels is not None:
        register_classification(store)
        labels_out = writer.add_connection(plan.labels_topic, CLASSIFICATION_MSG_TYPE, typestore=store)
    image_class = store.types[EMBEDDING_MSG_TYPE]
    chosen_ids = {c.id for c in chosen}
    sampler = FrameSampler(plan.every_s)
    window = max(1, int(encoder.capacity))
    pending: deque[_Pending] = deque()

    unusable_in_a_row = 0

    def finish_one() -> None:
        nonlocal unusable_in_a_row
        item = pending.popleft()
        try:
            result = item.future.result()  # any other encoder failure is not a frame problem: it ends the run
        except EncoderOutputError as error:
            unusable_in_a_row += 1
            if unusable_in_a_row >= MAX_UNUSABLE_OUTPUTS_IN_A_ROW:
                raise EncoderOutputError(f"{unusable_in_a_row} frames in a row gave no usable embedding, so the "
                                         f"shard set or the NPU is at fault, not the frames; the last: {error}"
                                         ) from error
            summary.skipped.append(SkippedFrame(item.topic, item.log_time_ns, f"encoder output: {one_line(error)}"))
            bar.update(1)
            return
        unusable_in_a_row = 0
        message = image_class(header=item.header, **embedding_fields(result.embedding))
        writer.write(embedding_out, item.log_time_ns, store.serialize_cdr(message, EMBEDDING_MSG_TYPE))
        if labels is not None and labels_out is not None:
            results = labels.top_k(result.embedding, plan.labels_top_k)
            writer.write(labels_out, item.log_time_ns,
                         store.serialize_cdr(classification(store, item.header, results), CLASSIFICATION_MSG_TYPE))
        summary.frames += 1
        summary.latencies_s.append(result.latency_s)
        bar.update(1)

    bar = progress_bar(sum(c.msgcount for c in chosen), progress)
    try:
        for connection, log_time_ns, raw in bag.reader.messages(connections):
            target = outputs.get(connection.id)
            if target is not None:
                writer.write(target, log_time_ns, raw)
                summary.copied_messages += 1
            if connection.id not in chosen_ids:
                continue
            if not _due(sampler, connection.topic, raw, log_time_ns):
                summary.left_out += 1
                bar.update(1)
                continue
            while pending and (len(pending) >= window or pending[0].future.done()):
                finish_one()
            submitted = _submit(store, connection, log_time_ns, raw, encoder, summary, max_image_pixels)
            if submitted is None:
                bar.update(1)
            else:
                pending.append(submitted)
        while pending:
            finish_one()
        if summary.frames == 0 and unusable_in_a_row:  # a short bag whose every frame failed: the run failed
            raise EncoderOutputError(f"none of the {unusable_in_a_row} frames gave a usable embedding, so the shard "
                                     f"set or the NPU is at fault, not the frames; the last: "
                                     f"{summary.skipped[-1].reason}")
    finally:
        for item in pending:
            item.future.cancel()
        bar.close()


def _due(sampler: FrameSampler, topic: str, raw: bytes, log_time_ns: int) -> bool:
    """Whether --every keeps this frame (a frame without a readable header is kept: decoding it says what is wrong)."""
    key = header_or_none(raw)
    return key is None or sampler.keep(topic, key[0] * 1_000_000_000 + key[1], log_time_ns)


def _submit(store: Typestore, connection: Connection, log_time_ns: int, raw: bytes, encoder: SiglipEncoder,
            summary: ReplaySummary, max_image_pixels: int) -> _Pending | None:
    """Decode one image message and hand it to the encoder; None (and a counted skip) when the frame is bad."""
    try:
        message = store.deserialize_cdr(raw, connection.msgtype)
    except Exception as error:  # noqa: BLE001 - any corrupt payload is a bad frame, not a failed run
        summary.skipped.append(SkippedFrame(connection.topic, log_time_ns, f"corrupt message: {one_line(error)}"))
        return None
    try:
        image = image_from_message(message, max_image_pixels)
        future = encoder.submit(image)
    except (BadFrame, ValueError) as error:
        summary.skipped.append(SkippedFrame(connection.topic, log_time_ns, one_line(error)))
        return None
    return _Pending(future, message.header, log_time_ns, connection.topic)
