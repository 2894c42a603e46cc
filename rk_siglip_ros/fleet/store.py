"""The index on disk (or an object store): two LanceDB tables, written so no run leaves a bag half in.

A bag goes in as three commits: its ``bags`` marker row in state ``writing``, all of its frame rows in one
``frames`` commit, then the marker set to ``done``. LanceDB commits are atomic, so a run killed at any point leaves a
bag either absent, complete and marked, or complete or absent with a ``writing`` marker; opening the index for
writing removes the rows and marker of every ``writing`` bag (:meth:`FleetIndex.recover`), and the bag is indexed
again from scratch. One writer at a time: two ``index_bags`` runs into one index are not supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from rk_siglip_ros.fleet import FleetError
from rk_siglip_ros.fleet.schema import (
    BAGS_SCHEMA,
    BAGS_TABLE,
    FRAMES_TABLE,
    STATE_DONE,
    STATE_WRITING,
    BagRows,
    frames_schema,
    frames_table,
    identity_of,
    shards_of,
)
from rk_siglip_ros.model_identity import ModelIdentity, ModelMismatchError


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def sql_string(text: str) -> str:
    """``text`` as an SQL string literal for LanceDB filters."""
    return "'" + text.replace("'", "''") + "'"


def check_writable(uri: str) -> None:
    """FleetError (one line) when a local index folder cannot be created or written; object stores are left to
    LanceDB, which says what it lacks when it first writes."""
    if not _is_local(uri):
        return
    folder = Path(uri.removeprefix("file://"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".rk_siglip_ros-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise FleetError(f"cannot write the index {uri} ({error.strerror or error}); pick a folder you can write, "
                         "or fix its permissions") from None


def _table_names(db: Any) -> set[str]:
    names: set[str] = set()
    token = None
    while True:
        page = db.list_tables(page_token=token)
        names |= set(page.tables)
        token = page.page_token
        if not token:
            return names


class FleetIndex:
    """An open index: its frames and bags tables and the model that made it. Use :meth:`open_for_writing` or
    :meth:`open_for_reading`."""

    def __init__(self, uri: str, db: Any, frames: Any, bags: Any) -> None:
        self.uri, self._db, self.frames, self.bags = uri, db, frames, bags
        identity = identity_of(frames.schema)
        if identity is None:
            raise FleetError(f"{uri}: its {FRAMES_TABLE} table was not written by index_bags (no model identity)")
        self.identity: ModelIdentity = identity
        self.shards = shards_of(frames.schema)

    @classmethod
    def open_for_writing(cls, uri: str, identity: ModelIdentity, shards: str) -> FleetIndex:
        """Open or create the index at ``uri`` for ``identity``'s embeddings; ModelMismatchError when another model
        made it. Half-written bags of an interrupted run are removed (see :meth:`recover`)."""
        import lancedb

        check_writable(uri)
        db = lancedb.connect(uri)
        names = _table_names(db)
        if FRAMES_TABLE not in names:
            db.create_table(FRAMES_TABLE, schema=frames_schema(identity, shards), exist_ok=True)
        if BAGS_TABLE not in names:
            db.create_table(BAGS_TABLE, schema=BAGS_SCHEMA, exist_ok=True)
        index = cls(uri, db, db.open_table(FRAMES_TABLE), db.open_table(BAGS_TABLE))
        index.check_model(identity, "add to it")
        return index

    @classmethod
    def open_for_reading(cls, uri: str) -> FleetIndex:
        import lancedb

        if _is_local(uri) and not Path(uri.removeprefix("file://")).is_dir():
            raise FleetError(f"{uri}: no such index; make one with `index_bags {uri} BAG... --shards DIR`")
        db = lancedb.connect(uri)
        if not {FRAMES_TABLE, BAGS_TABLE} <= _table_names(db):
            raise FleetError(f"{uri}: not an index made by index_bags (no {FRAMES_TABLE} and {BAGS_TABLE} tables)")
        return cls(uri, db, db.open_table(FRAMES_TABLE), db.open_table(BAGS_TABLE))

    def check_model(self, identity: ModelIdentity, doing: str) -> None:
        """ModelMismatchError when ``identity``'s model is not the index's (checkpoint, architecture, width).
        Another build of the same checkpoint embeds alike and is accepted."""
        if not self.identity.same_model(identity):
            raise ModelMismatchError(
                f"{self.uri} holds embeddings of {self.identity.describe()}; the shard set given is "
                f"{identity.describe()}: cannot {doing}, embeddings of different models do not compare. Pass --shards "
                f"with a shard set of {self.identity.checkpoint}, or use another index")

    # -------------------------------------------------------------------------------------------- bags

    def bag_states(self) -> dict[str, tuple[str, str]]:
        """fingerprint -> (state, path) of every bag the index knows."""
        table = self.bags.to_arrow()
        return {fp: (state, path) for fp, state, path in zip(table["bag_fingerprint"].to_pylist(),
                                                           table["state"].to_pylist(),
                                                           table["bag_path"].to_pylist(), strict=True)}

    def done_bags(self) -> dict[str, str]:
        """fingerprint -> path of the bags completely in the index."""
        return {fp: path for fp, (state, path) in self.bag_states().items() if state == STATE_DONE}

    def recover(self) -> list[str]:
        """Remove every trace of bags an interrupted run left in state ``writing``; returns their paths."""
        unfinished = {fp: path for fp, (state, path) in self.bag_states().items() if state == STATE_WRITING}
        for fp in unfinished:
            self.frames.delete(f"bag_fingerprint = {sql_string(fp)}")
            self.bags.delete(f"bag_fingerprint = {sql_string(fp)}")
        return sorted(unfinished.values())

    def add_bag(self, bag: BagRows) -> None:
        """All of a bag's rows in one commit, between its ``writing`` and ``done`` markers."""
        where = f"bag_fingerprint = {sql_string(bag.fingerprint)}"
        self.bags.delete(where)
        self.bags.add(self._marker(bag, STATE_WRITING))
        self.frames.delete(where)  # nothing, unless a marker was lost: never two copies of a bag
        if bag.rows:
            self.frames.add(frames_table(bag, self.identity, self.frames.schema))
        self.bags.update(where=where, values={"state": STATE_DONE})

    @staticmethod
    def _marker(bag: BagRows, state: str) -> pa.Table:
        return pa.table({"bag_fingerprint": [bag.fingerprint], "bag_path": [bag.path], "state": [state],
                         "source": [bag.source], "frames": [len(bag.rows)], "skipped": [bag.skipped]},
                        schema=BAGS_SCHEMA)

    def compact(self) -> None:
        """Merge the small files one commit per bag leaves (hundreds of bags: hundreds of fragments, each a seek per
        scan) and fold new rows into an existing vector index; versions older than LanceDB's default (a week) go."""
        self.frames.optimize()
        self.bags.optimize()

    def count_rows(self) -> int:
        return int(self.frames.count_rows())
