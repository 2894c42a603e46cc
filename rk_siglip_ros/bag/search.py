"""`search_bag`: rank the frames of a bag holding ``/siglip/embeddings`` by text queries, ROS-free.

One pass reads every embedding (from ``encode_bag``, or recorded from the node) and the header of every camera
frame, so each hit is named by its stamp, frame_id and image topic. Queries are embedded once with the text tower
of the shard set that made the embeddings (recorded in the bag's metadata by ``encode_bag``, or given), then every
frame is scored at once: an (N x D) @ (D x Q) product. A contact sheet, when asked for, takes a second pass that
decodes only the frames it shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rk_siglip_ros.atomic_file import write_atomically
from rk_siglip_ros.bag.errors import BagError
from rk_siglip_ros.bag.io import FrameKey, OpenBag, header_of, header_or_none
from rk_siglip_ros.bag.replay import (
    EMBEDDING_MSG_TYPE,
    EMBEDDING_TOPIC,
    META_EMBEDDING_TOPIC,
    META_MANIFEST_SHA256,
    META_MODEL,
    META_SHARDS,
)
from rk_siglip_ros.errors import one_line
from rk_siglip_ros.manifest import MANIFEST_NAME, Manifest, file_sha256
from rk_siglip_ros.messages.camera_frames import IMAGE_MSG_TYPES, image_from_message
from rk_siglip_ros.messages.embedding_msg import embedding_from_message
from rk_siglip_ros.runtime.postprocess import l2_normalise_rows

if TYPE_CHECKING:
    from rk_siglip_ros.text import LabelSet

DEFAULT_TOP = 5
# Contact sheet geometry (pixels): one row per query, one tile per hit.
TILE = (192, 144)
CAPTION_H = 34
LABEL_W = 220
MARGIN = 8
BACKGROUND = (255, 255, 255)



@dataclass(frozen=True)
class EmbeddedFrame:
    """One embedded frame: its header and where its image is in the bag (topic "" when the bag lacks it)."""

    sec: int
    nanosec: int
    frame_id: str
    topic: str = ""

    @property
    def key(self) -> FrameKey:
        return (self.sec, self.nanosec, self.frame_id)

    @property
    def stamp(self) -> str:
        return f"{self.sec}.{self.nanosec:09d}"


@dataclass
class BagEmbeddings:
    """Every embedding of a bag, row i for ``frames[i]``, and what the bag says about the shard set that made them."""

    frames: list[EmbeddedFrame]
    matrix: np.ndarray  # (N, D) float32, unit rows
    topic: str
    custom_data: dict[str, str] = field(default_factory=dict)
    unreadable: int = 0  # embedding messages that did not deserialise or decode (skipped)

    @property
    def width(self) -> int:
        return int(self.matrix.shape[1])


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 = best
    frame: EmbeddedFrame
    probability: float


# ------------------------------------------------------------------------------------------------ reading


def custom_data(reader: object) -> dict[str, str]:
    """metadata.yaml's custom_data of an open rosbags Reader ({} for a bare .mcap/.db3 or an older bag)."""
    metadata = getattr(getattr(reader, "storage", None), "metadata", None)
    return dict(getattr(metadata, "custom", None) or {})


def read_embeddings(bag: OpenBag, topic: str | None = None) -> BagEmbeddings:
    """Every embedding on ``topic`` (default: the one the bag's metadata names, else /siglip/embeddings), with the
    image topic of its frame; BagError when the bag has none."""
    custom = custom_data(bag.reader)
    topic = topic or custom.get(META_EMBEDDING_TOPIC) or EMBEDDING_TOPIC
    connections = bag.reader.connections
    embedding_connections = [c for c in connections if c.topic == topic and c.msgtype == EMBEDDING_MSG_TYPE]
    if not embedding_connections:
        listing = ", ".join(sorted({c.topic for c in connections})) or "none"
        raise BagError(f"the bag has no embeddings on {topic} (its topics: {listing}); make them with "
                       "`encode_bag IN OUT --shards DIR`, or pass --embedding-topic")
    image_connections = [c for c in connections if c.msgtype in IMAGE_MSG_TYPES and c.topic != topic]
    wanted = {c.id for c in embedding_connections}
    image_topics: dict[FrameKey, str] = {}
    rows: list[np.ndarray] = []
    keys: list[FrameKey] = []
    unreadable = 0
    for connection, _, raw in bag.reader.messages([*embedding_connections, *image_connections]):
        if connection.id in wanted:
            try:
                message = bag.typestore.deserialize_cdr(raw, connection.msgtype)
                vector = embedding_from_message(message)
            except Exception:  # noqa: BLE001 - a corrupt message is skipped and counted, not a failed search
                unreadable += 1
                continue
            if vector.shape[0] != 1:
                continue  # patch tokens recorded on the same topic: not a frame embedding
            rows.append(vector[0])
            keys.append((int(message.header.stamp.sec), int(message.header.stamp.nanosec),
                         str(message.header.frame_id)))
        else:
            key = header_or_none(raw)
            if key is not None:
                image_topics.setdefault(key, connection.topic)
    if not rows:
        raise BagError(f"the bag's {topic} holds no 1 x D embeddings; make them with `encode_bag IN OUT --shards DIR`")
    widths = {row.shape[0] for row in rows}
    if len(widths) != 1:
        raise BagError(f"the embeddings on {topic} have different widths {sorted(widths)}: they came from more than "
                       "one shard set; search one run at a time")
    matrix = l2_normalise_rows(np.stack(rows))
    frames = [EmbeddedFrame(*key, topic=image_topics.get(key, "")) for key in keys]
    return BagEmbeddings(frames, matrix, topic, custom, unreadable)


# ------------------------------------------------------------------------------------------------ shard set


def shards_for(embeddings: BagEmbeddings, given: Path | None) -> Path:
    """The shard set to embed the queries with: ``given``, else the one the bag's metadata names."""
    if given is not None:
        return given
    recorded = embeddings.custom_data.get(META_SHARDS)
    if recorded and (Path(recorded) / MANIFEST_NAME).is_file():
        return Path(recorded)
    where = f"recorded {recorded}, which is not there any more" if recorded else "not recorded in the bag's metadata"
    raise BagError(f"which shard set made these embeddings? ({where}); pass --shards DIR: the shard set, built with "
                   "--text, that the node or encode_bag ran")


def check_same_shard_set(embeddings: BagEmbeddings, manifest: Manifest) -> str | None:
    """BagError when the embeddings cannot have come from ``manifest``'s shard set: another width, or another model
    recorded in the bag. Another build of the same model (other profile, rebuilt with --text) embeds alike: allowed,
    and the returned note says so."""
    width = manifest.model.embedding_dim
    if embeddings.width != width:
        raise BagError(f"the bag's embeddings are {embeddings.width} wide but shard set {manifest.root} makes "
                       f"{width}-wide ones: they came from another shard set; pass --shards with the one that made "
                       "them")
    model = embeddings.custom_data.get(META_MODEL)
    if model and model != manifest.model.source:
        raise BagError(f"the bag's embeddings came from another shard set (model {model}) than {manifest.root} "
                       f"(model {manifest.model.source}); pass --shards with a shard set of {model}")
    recorded = embeddings.custom_data.get(META_MANIFEST_SHA256)
    if recorded and manifest.root is not None and file_sha256(manifest.root / MANIFEST_NAME) != recorded:
        return (f"note: {manifest.root} is another build of {manifest.model.source} than the one that encoded the "
                "bag; the same model embeds alike")
    return None


# ------------------------------------------------------------------------------------------------ ranking


def rank(embeddings: BagEmbeddings, queries: LabelSet, top: int) -> list[list[Hit]]:
    """Per query (in order), the ``top`` most probable frames, best first (ties: bag order)."""
    probabilities = queries.probabilities(embeddings.matrix).reshape(len(embeddings.frames), len(queries))
    results = []
    for column in range(len(queries)):
        scores = probabilities[:, column]
        order = np.lexsort((np.arange(len(scores)), -scores))[:top]
        results.append([Hit(i + 1, embeddings.frames[index], float(scores[index])) for i, index in enumerate(order)])
    return results


def format_hits(queries: Sequence[str], hits: list[list[Hit]]) -> str:
    """Per query, a table: rank, header stamp, image topic, frame_id, probability."""
    frames = [hit.frame for row in hits for hit in row]
    topic_w = max([len("topic"), *(len(frame.topic or "-") for frame in frames)])
    frame_w = max([len("frame_id"), *(len(frame.frame_id or "-") for frame in frames)])
    lines = []
    for query, query_hits in zip(queries, hits, strict=True):
        lines.append(f"query {query!r}:")
        lines.append(f"  {'rank':>4}  {'stamp':<20}  {'topic':<{topic_w}}  {'frame_id':<{frame_w}}  probability")
        for hit in query_hits:
            lines.append(f"  {hit.rank:>4}  {hit.frame.stamp:<20}  {hit.frame.topic or '-':<{topic_w}}  "
                         f"{hit.frame.frame_id or '-':<{frame_w}}  {hit.probability:.6g}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ contact sheet


@dataclass(frozen=True)
class SheetLayout:
    """Where everything is on the sheet: its size and each tile's box (left, top, right, bottom), row by row."""

    size: tuple[int, int]
    tiles: list[tuple[int, int, int, int]]


def frame_images(bag: OpenBag, keys: set[FrameKey], embedding_topic: str) -> dict[FrameKey, np.ndarray]:
    """The RGB images of the frames in ``keys`` (matched by header stamp and frame_id), decoding only those."""
    images: dict[FrameKey, np.ndarray] = {}
    connections = [c for c in bag.reader.connections if c.msgtype in IMAGE_MSG_TYPES and c.topic != embedding_topic]
    for connection, _, raw in bag.reader.messages(connections):
        key = header_or_none(raw)
        if key is None or key not in keys or key in images:
            continue
        try:
            images[key] = image_from_message(bag.typestore.deserialize_cdr(raw, connection.msgtype))
        except Exception:  # noqa: BLE001 - any frame that does not decode is drawn as "no image"
            continue
    return images


def sheet_layout(rows: int, columns: int) -> SheetLayout:
    tile_w, tile_h = TILE
    cell_w, cell_h = tile_w + MARGIN, tile_h + CAPTION_H + MARGIN
    size = (LABEL_W + columns * cell_w + MARGIN, rows * cell_h + MARGIN)
    tiles = [(LABEL_W + c * cell_w, MARGIN + r * cell_h, LABEL_W + c * cell_w + tile_w, MARGIN + r * cell_h + tile_h)
             for r in range(rows) for c in range(columns)]
    return SheetLayout(size, tiles)


def write_contact_sheet(path: Path, queries: Sequence[str], hits: list[list[Hit]],
                        images: Mapping[FrameKey, np.ndarray] | Callable[[Hit], np.ndarray | None]) -> SheetLayout:
    """A PNG with one row per query (its text on the left) and one thumbnail per hit, captioned with its rank and
    probability; written whole or not at all. ``images``: by frame key, or a function of the hit (the fleet index,
    whose frames from different bags can share a key). Returns the layout (tiles of queries with fewer hits stay
    empty)."""
    from PIL import Image, ImageDraw, ImageOps

    columns = max((len(row) for row in hits), default=0)
    layout = sheet_layout(len(queries), columns)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for row, (query, query_hits) in enumerate(zip(queries, hits, strict=True)):
        top = layout.tiles[row * columns][1] if columns else MARGIN
        draw.multiline_text((MARGIN, top), _wrap(query, 28), fill=(0, 0, 0))
        for column, hit in enumerate(query_hits):
            left, top, right, bottom = layout.tiles[row * columns + column]
            image = images(hit) if callable(images) else images.get(hit.frame.key)
            tile = Image.new("RGB", TILE, (200, 200, 200))
            if image is not None:
                thumbnail = ImageOps.contain(Image.fromarray(image), TILE)  # up or down, aspect kept
                tile.paste(thumbnail, ((TILE[0] - thumbnail.width) // 2, (TILE[1] - thumbnail.height) // 2))
            else:
                ImageDraw.Draw(tile).text((8, TILE[1] // 2), "no image in the bag", fill=(60, 60, 60))
            sheet.paste(tile, (left, top))
            draw.text((left, bottom + 3), f"#{hit.rank}  p = {hit.probability:.4g}", fill=(0, 0, 0))
            draw.text((left, bottom + 17), f"{hit.frame.stamp} {hit.frame.topic}"[:34], fill=(90, 90, 90))
    write_atomically(path, lambda stream: sheet.save(stream, format="PNG"))
    return layout


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:6])


__all__ = ["BagEmbeddings", "EmbeddedFrame", "Hit", "SheetLayout", "check_same_shard_set", "custom_data", "format_hits",
           "frame_images",
           "header_of", "one_line", "rank", "read_embeddings", "shards_for", "write_contact_sheet"]
