"""Queries against the index: nearest rows by cosine, then exact scores on the candidates' own vectors.

A text query scores as ``search_bag`` does, sigmoid(logit_scale * cos + logit_bias) with the text tower of the
index's model (:meth:`LabelSet.probabilities`), so the same frames get the same scores. An image query scores by
cosine. LanceDB finds the candidates: an exact scan, or the IVF-PQ index once there is one (:mod:`.ann`); either
way the scores are computed here from the stored vectors, and ties keep the index's row order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rk_siglip_ros.bag.search import EmbeddedFrame, Hit
from rk_siglip_ros.fleet import FleetError
from rk_siglip_ros.fleet.ann import METRIC, NPROBES, REFINE_FACTOR, vector_index
from rk_siglip_ros.fleet.store import FleetIndex, sql_string
from rk_siglip_ros.fleet.thumbnails import decode_thumbnail

Scorer = Callable[[np.ndarray], np.ndarray]  # (N, D) unit rows -> (N,) scores, larger is better
COLUMNS = ["bag_path", "topic", "stamp_ns", "frame_id", "msg_index", "vector"]
# Extra candidates fetched past ``top``, so rounding in LanceDB's distances cannot push a frame out of the top
# that the exact score puts in it.
SPARE_CANDIDATES = 8


@dataclass(frozen=True)
class Filters:
    """Which rows a query may return: any of ``bags`` (substrings of the bag path), any of ``topics``, and header
    stamps in [since_ns, until_ns]."""

    bags: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    since_ns: int | None = None
    until_ns: int | None = None

    def where(self) -> str | None:
        """The SQL filter LanceDB applies before the vector search (None: no filter)."""
        parts = []
        if self.bags:
            parts.append("(" + " OR ".join(f"bag_path LIKE {sql_string('%' + _like_escaped(b) + '%')}"
                                           for b in self.bags) + ")")
        if self.topics:
            parts.append(f"topic IN ({', '.join(sql_string(t) for t in self.topics)})")
        if self.since_ns is not None:
            parts.append(f"stamp_ns >= {int(self.since_ns)}")
        if self.until_ns is not None:
            parts.append(f"stamp_ns <= {int(self.until_ns)}")
        return " AND ".join(parts) or None


def _like_escaped(text: str) -> str:
    """A bag filter matches literally: LIKE's wildcards are taken out (``_`` also matches itself)."""
    return text.replace("%", "")


@dataclass(frozen=True)
class IndexHit:
    rank: int  # 1 = best
    bag_path: str
    topic: str
    stamp_ns: int
    frame_id: str
    msg_index: int
    score: float
    thumbnail: bytes = b""

    @property
    def stamp(self) -> str:
        sec, nanosec = divmod(self.stamp_ns, 1_000_000_000)
        return f"{sec}.{nanosec:09d}"

    def as_bag_hit(self) -> Hit:
        """The same hit as ``search_bag`` names one (for its contact sheet)."""
        sec, nanosec = divmod(self.stamp_ns, 1_000_000_000)
        return Hit(self.rank, EmbeddedFrame(sec, nanosec, self.frame_id, self.topic), self.score)

    def image(self) -> np.ndarray | None:
        return decode_thumbnail(self.thumbnail)


def nearest(index: FleetIndex, query: np.ndarray, scorer: Scorer, top: int, filters: Filters = Filters(),
            exact: bool = False, thumbnails: bool = False) -> list[IndexHit]:
    """The ``top`` best rows for one (D,) query vector, best first; ``exact`` bypasses the ANN index."""
    if query.shape != (index.identity.embedding_dim,):
        raise FleetError(f"a {query.shape[-1]}-wide query against an index of {index.identity.embedding_dim}-wide "
                         "embeddings")
    builder = index.frames.search(np.asarray(query, np.float32), vector_column_name="vector").distance_type(METRIC)
    where = filters.where()
    if where:
        builder = builder.where(where, prefilter=True)
    if exact or vector_index(index.frames) is None:
        builder = builder.bypass_vector_index()
    else:
        builder = builder.nprobes(NPROBES).refine_factor(REFINE_FACTOR)
    columns = COLUMNS + (["thumbnail"] if thumbnails else [])
    # _distance asked for by name: LanceDB warns on every query that leaves it to be added implicitly.
    table = builder.select([*columns, "_distance"]).limit(top + SPARE_CANDIDATES).to_arrow()
    if table.num_rows == 0:
        return []
    vectors = np.asarray(table["vector"].combine_chunks().flatten(), np.float32).reshape(table.num_rows, -1)
    scores = np.asarray(scorer(vectors), np.float32)
    order = np.lexsort((np.arange(len(scores)), -scores))[:top]
    data = {name: table[name].to_pylist() for name in columns if name != "vector"}
    return [IndexHit(rank + 1, data["bag_path"][i], data["topic"][i], int(data["stamp_ns"][i]), data["frame_id"][i],
                     int(data["msg_index"][i]), float(scores[i]), data["thumbnail"][i] if thumbnails else b"")
            for rank, i in enumerate(order)]


def format_hits(queries: Sequence[str], hits: list[list[IndexHit]], score_name: Sequence[str]) -> str:
    """Per query, a table: rank, bag, topic, stamp, frame_id, score."""
    flat = [hit for row in hits for hit in row]
    bag_w = max([len("bag"), *(len(hit.bag_path) for hit in flat)])
    topic_w = max([len("topic"), *(len(hit.topic or "-") for hit in flat)])
    lines = []
    for query, name, query_hits in zip(queries, score_name, hits, strict=True):
        lines.append(f"query {query!r}:")
        lines.append(f"  {'rank':>4}  {'bag':<{bag_w}}  {'topic':<{topic_w}}  {'stamp':<20}  frame_id  {name}")
        for hit in query_hits:
            lines.append(f"  {hit.rank:>4}  {hit.bag_path:<{bag_w}}  {hit.topic or '-':<{topic_w}}  "
                         f"{hit.stamp:<20}  {hit.frame_id or '-'}  {hit.score:.6g}")
        if not query_hits:
            lines.append("  (no frame matches the filters)")
    return "\n".join(lines)
