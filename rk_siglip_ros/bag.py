"""Offline replay: a rosbag2 in, the same bag plus one embedding per camera frame out.

ROS-free (rosbags reads and writes the bag), so it runs on a laptop, in CI, or on the robot without a sourced ROS
environment. The flow is one pass over the input in log order:

- every message of every connection is copied through byte for byte (same topic, type, definition, QoS);
- image messages on the chosen topics are decoded (:func:`imaging.image_from_message`) and submitted to the
  encoder, keeping up to ``encoder.capacity`` frames in flight so every core stays busy while the next frame is
  decoded; results come back in submission order and are written to the embedding topic as ``sensor_msgs/Image``
  32FC1 (:func:`messages.embedding_fields`), header = the source header, log time = the source log time;
- frames that cannot be decoded are counted with their reason and skipped; the run continues.

Output is written to a hidden temporary folder beside OUT and renamed into place only when the bag is complete,
so an interrupted or failed run never leaves an OUT that looks finished.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rosbags.interfaces import Connection, ConnectionExtRosbag2, MessageDefinitionFormat
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from .imaging import IMAGE_MSG_TYPES, BadFrame, image_from_message
from .messages import embedding_fields

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

    from .encoder import EncodeResult, SiglipEncoder

EMBEDDING_TOPIC = "/siglip/embeddings"
EMBEDDING_MSG_TYPE = IMAGE_MSG_TYPES[0]  # sensor_msgs/msg/Image, 32FC1 (messages.embedding_fields)
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
# Typestores a user may name; the bag's own message definitions, where it carries them, take precedence.
TYPESTORES = {
    "foxy": Stores.ROS2_FOXY,
    "galactic": Stores.ROS2_GALACTIC,
    "humble": Stores.ROS2_HUMBLE,
    "iron": Stores.ROS2_IRON,
    "jazzy": Stores.ROS2_JAZZY,
    "kilted": Stores.ROS2_KILTED,
}
# Bags older than metadata version 8 do not record their distro; Humble is the long-term release of that era.
FALLBACK_TYPESTORE = "humble"
ROS1_BAG_MAGIC = b"#ROSBAG V2.0"
_IDL_SEPARATOR = "=" * 80 + "\n"


class BagError(ValueError):
    """A request encode_bag cannot carry out; the message is one line that says what to do."""


# --------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SkippedFrame:
    topic: str
    log_time_ns: int
    reason: str


@dataclass
class ReplaySummary:
    """What one replay did; :func:`format_summary` renders it for people."""

    output: Path
    storage: str
    typestore: str
    image_topics: list[str]
    embedding_topic: str
    embedding_dim: int
    frames: int = 0
    copied_messages: int = 0
    skipped: list[SkippedFrame] = field(default_factory=list)
    dropped_topics: dict[str, str] = field(default_factory=dict)  # topic -> why it could not be copied
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def mean_latency_s(self) -> float:
        return float(np.mean(self.latencies_s)) if self.latencies_s else float("nan")

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else float("nan")


def format_summary(summary: ReplaySummary) -> str:
    lines = [
        f"wrote {summary.output} ({summary.storage})",
        f"  frames encoded   {summary.frames} from {', '.join(summary.image_topics)} -> {summary.embedding_topic} "
        f"({summary.embedding_dim}-d)",
        f"  throughput       {summary.frames_per_s:.2f} frames/s over {summary.wall_s:.1f} s",
        f"  mean latency     {summary.mean_latency_s * 1000:.1f} ms (submit -> embedding)",
        f"  copied through   {summary.copied_messages} messages",
        f"  skipped frames   {len(summary.skipped)}",
    ]
    by_topic = Counter(f"{frame.topic}: {frame.reason}" for frame in summary.skipped)
    lines += [f"    {count} x {what}" for what, count in by_topic.most_common()]
    lines += [f"  NOT copied       {topic}: {why}" for topic, why in summary.dropped_topics.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- input side


@dataclass
class OpenBag:
    """An open input bag and the typestore that reads it."""

    reader: Reader
    typestore: Typestore
    typestore_name: str
    storage: str


@contextmanager
def open_bag(path: str | Path, typestore: str = "auto") -> Iterator[OpenBag]:
    """Open a rosbag2 (folder, or a bare .mcap / .db3 file) with a typestore that can read every connection.

    ``typestore``: "auto" (the distro the bag records, else Humble) or a name from :data:`TYPESTORES`; it only
    supplies types the bag does not define itself.
    """
    path = Path(path)
    reader = _reader(path)
    try:
        reader.open()
    except (ReaderError, OSError, KeyError, ValueError) as error:
        raise BagError(f"{path}: not a readable rosbag2 ({one_line(error)})") from None
    try:
        name = _typestore_name(reader, typestore)
        yield OpenBag(reader, merged_typestore(reader.connections, name), name, _storage_of(path))
    finally:
        reader.close()


def _reader(path: Path) -> Reader:
    if not path.exists():
        raise BagError(f"{path}: no such bag")
    if path.is_file() and _is_ros1_bag(path):
        raise BagError(f"{path}: this is a ROS 1 bag; convert it first with `rosbags-convert --src {path} "
                       "--dst <folder>` (ships with rosbags)")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(f"{path}: not a rosbag2 folder (no metadata.yaml); pass the bag folder or a .mcap/.db3 file")
    try:
        return Reader(path)
    except (ReaderError, OSError) as error:
        raise BagError(f"{path}: not a rosbag2 ({one_line(error)}); pass the bag folder or a .mcap/.db3 file") \
            from None


def _is_ros1_bag(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(len(ROS1_BAG_MAGIC)) == ROS1_BAG_MAGIC


def _storage_of(path: Path) -> str:
    files = [path] if path.is_file() else list(path.iterdir())
    return "mcap" if any(".mcap" in f.suffixes for f in files) else "sqlite3"


def _typestore_name(reader: Reader, requested: str) -> str:
    if requested != "auto":
        if requested not in TYPESTORES:
            raise BagError(f"unknown typestore {requested!r}; choose auto or one of {', '.join(TYPESTORES)}")
        return requested
    distro = (reader.ros_distro or "").lower()
    return distro if distro in TYPESTORES else FALLBACK_TYPESTORE


def merged_typestore(connections: Sequence[Connection], default: str) -> Typestore:
    """A typestore holding the bag's own definitions, completed with the ``default`` distro's types.

    The bag's definitions win: a bag recorded on another distro deserialises with the layout it was written with.
    """
    types: dict[str, Any] = {}
    for connection in connections:
        types.update(_types_from_definition(connection))
    base = get_typestore(TYPESTORES[default])
    for name, definition in base.fielddefs.items():
        types.setdefault(name, definition)
    store = get_typestore(Stores.EMPTY)
    builtin = set(store.fielddefs)
    store.register({name: definition for name, definition in types.items() if name not in builtin})
    return store


def _types_from_definition(connection: Connection) -> dict[str, Any]:
    definition = connection.msgdef
    try:
        if definition.format == MessageDefinitionFormat.MSG and definition.data:
            return dict(get_types_from_msg(definition.data, connection.msgtype))
        if definition.format == MessageDefinitionFormat.IDL and definition.data:
            types: dict[str, Any] = {}
            if definition.data.startswith(_IDL_SEPARATOR + "IDL: "):
                for block in definition.data.split(_IDL_SEPARATOR)[1:]:
                    types.update(get_types_from_idl(block.split("\n", 1)[1]))
            else:
                types.update(get_types_from_idl(definition.data))
            return types
    except Exception:  # noqa: BLE001 - a definition we cannot parse falls back to the distro's own types
        return {}
    return {}


def image_connections(connections: Sequence[Connection], topics: Sequence[str] | None,
                      exclude: Sequence[str] = ()) -> list[Connection]:
    """The connections to encode: all image topics by default, else exactly ``topics`` (each must be an image)."""
    images = [c for c in connections if c.msgtype in IMAGE_MSG_TYPES and c.topic not in exclude]
    if not topics:
        if not images:
            listing = ", ".join(sorted({f"{c.topic} ({c.msgtype})" for c in connections})) or "none"
            raise BagError(f"the bag has no image topics (sensor_msgs Image/CompressedImage); its topics: {listing}")
        return images
    chosen = []
    for topic in dict.fromkeys(topics):  # keep the order, drop repeats
        matching = [c for c in connections if c.topic == topic]
        if not matching:
            known = ", ".join(sorted({c.topic for c in images})) or "none"
            raise BagError(f"topic {topic} is not in the bag; its image topics: {known}")
        if topic in exclude:
            raise BagError(f"topic {topic} is the embedding output topic; pick another --embedding-topic")
        wrong = [c for c in matching if c.msgtype not in IMAGE_MSG_TYPES]
        if wrong:
            raise BagError(f"topic {topic} carries {wrong[0].msgtype}, not an image; image types: "
                           f"{', '.join(IMAGE_MSG_TYPES)}")
        chosen += matching
    return chosen


# ---------------------------------------------------------------------------------------------- output side


def check_output(in_path: str | Path, out_path: str | Path, force: bool) -> None:
    """Refuse an OUT that exists (unless ``force`` and it is a bag or a file) or that is the input itself."""
    source, target = Path(in_path).resolve(), Path(out_path).resolve()
    if target == source or source in target.parents:
        raise BagError(f"{out_path}: the output must not be the input bag or lie inside it")
    if not target.parent.is_dir():
        raise BagError(f"{target.parent}: the folder for the output does not exist")
    if target.exists() or target.is_symlink():
        if not force:
            raise BagError(f"{out_path} exists; pass --force to overwrite")
        if target.is_dir() and any(target.iterdir()) and not (target / "metadata.yaml").is_file():
            raise BagError(f"{out_path} is a folder that is not a rosbag2; refusing to overwrite it even with --force")


@contextmanager
def staged_output(out_path: Path) -> Iterator[Path]:
    """Yield a path to write the bag to; move it to ``out_path`` when the block succeeds, delete it otherwise."""
    stage = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.partial-", dir=out_path.parent))
    try:
        # The writer names its storage file after the folder, so stage under the final name.
        yield stage / out_path.name
        _replace(stage / out_path.name, out_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _replace(new: Path, target: Path) -> None:
    if not (target.exists() or target.is_symlink()):
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{time.monotonic_ns()}")
    target.rename(old)  # keep the previous bag until the new one is in place
    new.rename(target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _definition(connection: Connection, store: Typestore) -> tuple[str, str] | None:
    """(msgdef, rihs01) for writing ``connection`` again; None when neither the bag nor the typestore knows it."""
    data = connection.msgdef.data
    usable = connection.msgdef.format == MessageDefinitionFormat.MSG or data.startswith(_IDL_SEPARATOR + "IDL: ")
    known = connection.msgtype in store.fielddefs
    if data and usable:
        msgdef = data
    elif known:
        msgdef = store.generate_msgdef(connection.msgtype, ros_version=2)[0]
    else:
        return None
    if connection.digest.startswith("RIHS01_"):
        return msgdef, connection.digest
    return (msgdef, store.hash_rihs01(connection.msgtype)) if known else None


def _qos(connection: Connection) -> list[Any]:
    ext = connection.ext
    return list(ext.offered_qos_profiles) if isinstance(ext, ConnectionExtRosbag2) else []


# -------------------------------------------------------------------------------------------------- replay


@dataclass
class _Pending:
    future: Future[EncodeResult]
    header: Any
    log_time_ns: int


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
                  force: bool = False) -> ReplayPlan:
    """Every check :func:`encode_bag` makes before it needs the encoder, each done once; raises BagError.

    Returns the plan :func:`replay` carries out, holding the input bag open. The CLI calls it first so a bad request
    fails before the (slower) encoder starts.
    """
    if storage is not None and storage not in STORAGES:
        raise BagError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
    check_output(in_path, out_path, force)
    resources = ExitStack()
    try:
        bag = resources.enter_context(open_bag(in_path, typestore))
        if any(c.topic == embedding_topic for c in bag.reader.connections):
            raise BagError(f"the input already has {embedding_topic}; pass --embedding-topic to write elsewhere")
        chosen = image_connections(bag.reader.connections, topics, exclude=(embedding_topic,))
    except BaseException:
        resources.close()
        raise
    return ReplayPlan(bag, Path(out_path), storage or bag.storage, embedding_topic, chosen, resources)


def encode_bag(in_path: str | Path, out_path: str | Path, encoder: SiglipEncoder, *,
               topics: Sequence[str] | None = None, storage: str | None = None, typestore: str = "auto",
               embedding_topic: str = EMBEDDING_TOPIC, force: bool = False, progress: bool = False) -> ReplaySummary:
    """Replay ``in_path`` through ``encoder`` into a new bag at ``out_path``; see the module docstring.

    :func:`check_request` then :func:`replay`, for callers that already have an encoder.
    """
    with check_request(in_path, out_path, topics=topics, storage=storage, typestore=typestore,
                       embedding_topic=embedding_topic, force=force) as plan:
        return replay(plan, encoder, progress=progress)


def replay(plan: ReplayPlan, encoder: SiglipEncoder, progress: bool = False) -> ReplaySummary:
    """Carry out a checked request: copy every message through and write one embedding per good frame."""
    bag = plan.bag
    # Generate the (de)serialisers now: rosbags compiles them on first use with exec(), and a Ctrl-C landing inside
    # exec'd code makes CPython exit by SIGINT even after the interrupt is handled.
    _warm_up(bag.typestore, {c.msgtype for c in plan.chosen})
    summary = ReplaySummary(output=plan.output, storage=plan.storage, typestore=bag.typestore_name,
                            image_topics=plan.image_topics, embedding_topic=plan.embedding_topic,
                            embedding_dim=encoder.embedding_dim)
    started = time.perf_counter()
    with staged_output(plan.output) as stage, Writer(stage, version=Writer.VERSION_LATEST,
                                                     storage_plugin=STORAGES[summary.storage]) as writer:
        _record_provenance(writer, encoder, summary)
        _replay(bag, list(bag.reader.connections), plan.chosen, writer, encoder, summary, progress)
    summary.wall_s = time.perf_counter() - started
    return summary


def _record_provenance(writer: Writer, encoder: SiglipEncoder, summary: ReplaySummary) -> None:
    """metadata.yaml custom_data: which model made the embeddings, so a bag explains itself later."""
    manifest = getattr(encoder, "manifest", None)
    if manifest is not None:
        writer.set_custom_data("rk_siglip_ros.model", str(manifest.model.source))
        writer.set_custom_data("rk_siglip_ros.profile", str(manifest.profile))
    writer.set_custom_data("rk_siglip_ros.embedding_topic", summary.embedding_topic)
    writer.set_custom_data("rk_siglip_ros.image_topics", ",".join(summary.image_topics))


def _warm_up(store: Typestore, msgtypes: set[str]) -> None:
    for msgtype in msgtypes | {EMBEDDING_MSG_TYPE}:
        store.get_msgdef(msgtype)
    header = store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                                frame_id="")
    message = store.types[EMBEDDING_MSG_TYPE](header=header, **embedding_fields(np.zeros(1, np.float32)))
    store.deserialize_cdr(store.serialize_cdr(message, EMBEDDING_MSG_TYPE), EMBEDDING_MSG_TYPE)


def _replay(bag: OpenBag, connections: list[Connection], chosen: list[Connection], writer: Writer,
            encoder: SiglipEncoder, summary: ReplaySummary, progress: bool) -> None:
    store = bag.typestore
    outputs: dict[int, Connection] = {}
    for connection in connections:
        definition = _definition(connection, store)
        if definition is None:
            summary.dropped_topics[connection.topic] = (f"type {connection.msgtype} is not defined in the bag nor in "
                                                        f"the {bag.typestore_name} typestore")
            continue
        try:
            outputs[connection.id] = writer.add_connection(
                connection.topic, connection.msgtype, msgdef=definition[0], rihs01=definition[1],
                serialization_format=connection.ext.serialization_format, offered_qos_profiles=_qos(connection))
        except WriterError:  # the same topic/type/QoS recorded twice (split bags): share one output connection
            outputs[connection.id] = next(o for o in writer.connections if o.topic == connection.topic
                                          and o.msgtype == connection.msgtype)
    embedding_out = writer.add_connection(summary.embedding_topic, EMBEDDING_MSG_TYPE, typestore=store)
    image_class = store.types[EMBEDDING_MSG_TYPE]
    chosen_ids = {c.id for c in chosen}
    window = max(1, int(encoder.capacity))
    pending: deque[_Pending] = deque()

    def finish_one() -> None:
        item = pending.popleft()
        result = item.future.result()  # an encoder failure is not a frame problem: it ends the run
        message = image_class(header=item.header, **embedding_fields(result.embedding))
        writer.write(embedding_out, item.log_time_ns, store.serialize_cdr(message, EMBEDDING_MSG_TYPE))
        summary.frames += 1
        summary.latencies_s.append(result.latency_s)
        bar.update(1)

    bar = _progress_bar(sum(c.msgcount for c in chosen), progress)
    try:
        for connection, log_time_ns, raw in bag.reader.messages(connections):
            target = outputs.get(connection.id)
            if target is not None:
                writer.write(target, log_time_ns, raw)
                summary.copied_messages += 1
            if connection.id not in chosen_ids:
                continue
            while pending and (len(pending) >= window or pending[0].future.done()):
                finish_one()
            submitted = _submit(store, connection, log_time_ns, raw, encoder, summary)
            if submitted is None:
                bar.update(1)
            else:
                pending.append(submitted)
        while pending:
            finish_one()
    finally:
        for item in pending:
            item.future.cancel()
        bar.close()


def _submit(store: Typestore, connection: Connection, log_time_ns: int, raw: bytes, encoder: SiglipEncoder,
            summary: ReplaySummary) -> _Pending | None:
    """Decode one image message and hand it to the encoder; None (and a counted skip) when the frame is bad."""
    try:
        message = store.deserialize_cdr(raw, connection.msgtype)
    except Exception as error:  # noqa: BLE001 - any corrupt payload is a bad frame, not a failed run
        summary.skipped.append(SkippedFrame(connection.topic, log_time_ns, f"corrupt message: {one_line(error)}"))
        return None
    try:
        image = image_from_message(message)
        future = encoder.submit(image)
    except (BadFrame, ValueError) as error:
        summary.skipped.append(SkippedFrame(connection.topic, log_time_ns, one_line(error)))
        return None
    return _Pending(future, message.header, log_time_ns)


class _NoBar:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    # rate_noinv: always frames/s, where tqdm would flip slow rates to s/frame
    return tqdm(total=total or None, unit="frame", desc="encode_bag", dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]")


def one_line(error: BaseException) -> str:
    """An error as one line for a person: whitespace collapsed, no trailing period, the type name if it is empty."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.rstrip(".")
