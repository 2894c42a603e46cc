"""Reading rosbag2 files: open a bag (folder or bare .mcap/.db3) with a typestore that reads every connection, pick
its image connections, and describe connections for writing them again.

The bag's own message definitions win over a distro's, so bags from any ROS 2 distro read without a sourced ROS.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosbags.interfaces import Connection, ConnectionExtRosbag2, MessageDefinitionFormat
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from ..camera_frames import IMAGE_MSG_TYPES
from .errors import BagError, one_line

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
