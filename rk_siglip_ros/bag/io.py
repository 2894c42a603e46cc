"""Reading rosbag2 files: open a bag (folder or bare .mcap/.db3) with a typestore that reads every connection, pick
its image connections, and describe connections for writing them again.

The bag's own message definitions win over a distro's, so bags from any ROS 2 distro read without a sourced ROS.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosbags.interfaces import Connection, ConnectionExtRosbag2, MessageDefinitionFormat
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg, get_typestore

from rk_siglip_ros.bag.errors import BagError
from rk_siglip_ros.errors import one_line
from rk_siglip_ros.messages.camera_frames import IMAGE_MSG_TYPES

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

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
FrameKey = tuple[int, int, str]  # header stamp sec, nanosec, frame_id


@dataclass
class OpenBag:
    """An open input bag and the typestore that reads it."""

    reader: Reader
    typestore: Typestore
    typestore_name: str
    storage: str
    # msgtype -> why the bag's own definition could not be used (the typestore's is used instead)
    unparsed_definitions: dict[str, str] = field(default_factory=dict)


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
        raise BagError(f"{path}: not a readable rosbag2 ({one_line(error)}){_recovery_hint(path, error)}") from None
    try:
        name = _typestore_name(reader, typestore)
        unparsed: dict[str, str] = {}
        store = merged_typestore(reader.connections, name, unparsed)
        yield OpenBag(reader, store, name, _storage_of(path), unparsed)
    finally:
        reader.close()


def _reader(path: Path) -> Reader:
    if not path.exists():
        raise BagError(f"{path}: no such bag")
    if path.is_file() and _is_ros1_bag(path):
        raise BagError(f"{path}: this is a ROS 1 bag; convert it first with `rosbags-convert --src {path} "
                       "--dst <folder>` (ships with rosbags)")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(f"{path}: not a rosbag2 folder (no metadata.yaml); pass the bag folder or a .mcap/.db3 file. "
                       "A recorder killed before it finished writes no metadata.yaml: pass its .mcap/.db3 file "
                       f"itself, or rebuild the file with `ros2 bag reindex {path}`")
    try:
        return Reader(path)
    except (ReaderError, OSError) as error:
        raise BagError(f"{path}: not a rosbag2 ({one_line(error)}); pass the bag folder or a .mcap/.db3 file") \
            from None


def _recovery_hint(path: Path, error: BaseException) -> str:
    """What to do with a bag cut short (power loss, SIGKILL of the recorder): rosbags refuses an MCAP file without
    its end magic and summary, so point at the mcap CLI, which rewrites every complete chunk into a valid file."""
    files = [path] if path.is_file() else sorted(path.glob("*.mcap"))
    if not files or "magic" not in str(error).lower():
        return ""
    return (f"; the MCAP file ends early (a recording cut off by a power loss or a kill?). Recover what it holds "
            f"with the mcap CLI (https://mcap.dev): `mcap recover {files[0]} -o recovered.mcap`, then pass "
            "recovered.mcap")


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


def merged_typestore(connections: Sequence[Connection], default: str,
                     unparsed: dict[str, str] | None = None) -> Typestore:
    """A typestore holding the bag's own definitions, completed with the ``default`` distro's types.

    The bag's definitions win: a bag recorded on another distro deserialises with the layout it was written with.
    A definition that does not parse falls back to the distro's type; ``unparsed`` (msgtype -> reason) collects them.
    """
    types: dict[str, Any] = {}
    for connection in connections:
        try:
            types.update(_types_from_definition(connection))
        except TypesysError as error:
            if unparsed is not None:
                unparsed[connection.msgtype] = one_line(error)
    base = get_typestore(TYPESTORES[default])
    for name, definition in base.fielddefs.items():
        types.setdefault(name, definition)
    store = get_typestore(Stores.EMPTY)
    builtin = set(store.fielddefs)
    store.register({name: definition for name, definition in types.items() if name not in builtin})
    return store


def _types_from_definition(connection: Connection) -> dict[str, Any]:
    """The types a connection's own definition declares; TypesysError when it does not parse."""
    definition = connection.msgdef
    if definition.format == MessageDefinitionFormat.MSG and definition.data:
        return dict(get_types_from_msg(definition.data, connection.msgtype))
    if definition.format == MessageDefinitionFormat.IDL and definition.data:
        types: dict[str, Any] = {}
        if definition.data.startswith(_IDL_SEPARATOR + "IDL: "):
            for block in definition.data.split(_IDL_SEPARATOR)[1:]:
                types.update(get_types_from_idl(block.partition("\n")[2]))
        else:
            types.update(get_types_from_idl(definition.data))
        return types
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


def connection_definition(connection: Connection, store: Typestore) -> tuple[str, str] | None:
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


def connection_qos(connection: Connection) -> list[Any]:
    ext = connection.ext
    return list(ext.offered_qos_profiles) if isinstance(ext, ConnectionExtRosbag2) else []


def header_of(raw: bytes | memoryview) -> FrameKey:
    """(sec, nanosec, frame_id) of a serialised message whose first field is a std_msgs/Header (Image,
    CompressedImage), read from the CDR bytes without deserialising the pixels."""
    little = raw[1] == 1  # encapsulation CDR_LE (0x0001) or CDR_BE (0x0000)
    order = "<" if little else ">"
    sec, nanosec, length = struct.unpack_from(f"{order}iII", raw, 4)  # struct.error when too short
    frame_id = bytes(raw[16:16 + max(0, length - 1)]).decode("utf-8", "replace")  # length counts the NUL
    return sec, nanosec, frame_id


def header_or_none(raw: bytes | memoryview) -> FrameKey | None:
    """:func:`header_of`, or None for a message too short to hold a header."""
    try:
        return header_of(raw)
    except (struct.error, IndexError):  # a truncated message: not a frame anyone can be shown
        return None
