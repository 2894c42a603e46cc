"""An ``index_bags`` run: check the index, skip what it holds, encode the rest (here or on Ray), one commit a bag.

Every bag is dealt with alone: one that cannot be read, or fails while it is encoded, costs that bag (one line in
the summary) and the run goes on with the others. Bags already in the index with the same fingerprint are skipped,
wherever they now lie.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rk_siglip_ros.errors import one_line
from rk_siglip_ros.fleet.ann import ANN_MIN_ROWS, ensure_ann_index
from rk_siglip_ros.fleet.fingerprint import fingerprint
from rk_siglip_ros.fleet.rows import Sampling, bag_rows, frames_in
from rk_siglip_ros.fleet.schema import BagRows
from rk_siglip_ros.fleet.store import FleetIndex
from rk_siglip_ros.model_identity import ModelIdentity
from rk_siglip_ros.runtime.backends.base import NPU_CORES

if TYPE_CHECKING:
    from rk_siglip_ros.manifest import Manifest

INDEXED, ALREADY, FAILED = "indexed", "already indexed", "failed"
Report = Callable[[str], None]


@dataclass(frozen=True)
class EncoderOptions:
    """How each encoder (the in-process one, or one per Ray worker) is opened."""

    backend: str = "auto"
    mode: str = "pipeline"
    cores: tuple[int, ...] = NPU_CORES
    threads: int | None = None  # ONNX Runtime intra-op threads per session (None: its default; Ray workers: 1)


@dataclass
class BagOutcome:
    path: str
    status: str  # INDEXED | ALREADY | FAILED
    frames: int = 0
    skipped: int = 0
    message: str = ""

    def line(self) -> str:
        if self.status == INDEXED:
            skipped = f", {self.skipped} frame(s) skipped" if self.skipped else ""
            return f"{self.path}: indexed {self.frames} frame(s){skipped}{'; ' + self.message if self.message else ''}"
        return f"{self.path}: {self.status}{': ' + self.message if self.message else ''}"


@dataclass
class IndexSummary:
    uri: str
    outcomes: list[BagOutcome] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)  # bags an interrupted run left half in: removed, redone
    ann_note: str | None = None
    rows: int = 0
    wall_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    def format(self) -> str:
        lines = [outcome.line() for outcome in self.outcomes]
        if self.recovered:
            lines.append(f"removed the half-written rows of {len(self.recovered)} bag(s) an interrupted run left")
        if self.ann_note:
            lines.append(self.ann_note)
        lines.append(f"{self.uri}: {self.count(INDEXED)} bag(s) indexed, {self.count(ALREADY)} already there, "
                     f"{self.count(FAILED)} failed; {self.rows} rows in all ({self.wall_s:.1f} s)")
        return "\n".join(lines)


EncodedBag = tuple[str, str, "BagRows | str"]  # path, fingerprint, its rows or why it failed


DEFAULT_SAMPLING, DEFAULT_OPTIONS = Sampling(), EncoderOptions()


def index_bags(uri: str, paths: Sequence[str | Path], manifest: Manifest, sampling: Sampling = DEFAULT_SAMPLING,
               options: EncoderOptions = DEFAULT_OPTIONS, *, ray: str | None = None, ray_workers: int | None = None,
               progress: bool = False, report: Report | None = None, ann_min_rows: int = ANN_MIN_ROWS
               ) -> IndexSummary:
    """Index ``paths`` into ``uri`` with ``manifest``'s shard set; see the module docstring.

    ``ray``: None (encode in-process), "local", "auto" or a cluster address (:mod:`.distributed`). ``report``: gets
    one line per bag as it is done (default: nothing; the summary holds them all).
    """
    started = time.perf_counter()
    identity = ModelIdentity.of(manifest)
    index = FleetIndex.open_for_writing(uri, identity, str(manifest.root))
    summary = IndexSummary(uri, recovered=index.recover())
    tell = report or (lambda line: None)
    todo = _plan(paths, index, summary, tell)
    if todo:
        bars = _Bars(progress, len(todo), sum(frames_in(path, sampling) for path, _ in todo))
        try:
            if ray is None:
                encoded = _encode_in_process(todo, manifest, identity, sampling, options, bars.frame)
            else:
                from rk_siglip_ros.fleet.distributed import encode_on_ray

                encoded = encode_on_ray(todo, manifest, identity, sampling, options, ray, ray_workers)
            for path, _digest, result in encoded:
                outcome = _store(index, path, result)
                summary.outcomes.append(outcome)
                tell(outcome.line())
                bars.bag_done(outcome.frames + outcome.skipped)
        finally:
            bars.close()
    if summary.count(INDEXED):
        index.compact()
    summary.ann_note = ensure_ann_index(index.frames, identity.embedding_dim, ann_min_rows)
    summary.rows = index.count_rows()
    summary.wall_s = time.perf_counter() - started
    return summary


def _plan(paths: Sequence[str | Path], index: FleetIndex, summary: IndexSummary,
          tell: Report) -> list[tuple[str, str]]:
    """(path, fingerprint) of the bags to encode, in the order given; the others get their outcome now."""
    done = index.done_bags()
    todo: dict[str, str] = {}
    for given in paths:
        path = str(given)
        if not Path(path).exists():
            outcome = BagOutcome(path, FAILED, message="no such bag")
        else:
            try:
                digest = fingerprint(path)
            except OSError as error:
                outcome = BagOutcome(path, FAILED, message=f"cannot read it ({one_line(error)})")
            else:
                if digest in done or digest in todo.values():
                    where = done.get(digest, path)
                    outcome = BagOutcome(path, ALREADY, message="" if where == path else f"as {where}")
                else:
                    todo[path] = digest
                    continue
        summary.outcomes.append(outcome)
        tell(outcome.line())
    return list(todo.items())


def _store(index: FleetIndex, path: str, result: BagRows | str) -> BagOutcome:
    if isinstance(result, str):
        return BagOutcome(path, FAILED, message=result)
    index.add_bag(result)
    return BagOutcome(path, INDEXED, len(result.rows), result.skipped, result.note)


def encode_one(path: str, digest: str, encoder: Any, identity: ModelIdentity, sampling: Sampling,
               on_frames: Callable[[int], object] | None = None) -> BagRows | str:
    """A bag's rows, or one line saying why it has none; only an interrupt gets through."""
    try:
        return bag_rows(path, encoder, identity, sampling, on_frames, bag_fingerprint=digest)
    except Exception as error:  # noqa: BLE001 - one bad bag (corrupt, not a bag, unreadable) must not end the run
        name = "" if isinstance(error, ValueError) else f"{type(error).__name__}: "
        return f"{name}{one_line(error)}"


def _encode_in_process(todo: list[tuple[str, str]], manifest: Manifest, identity: ModelIdentity,
                       sampling: Sampling, options: EncoderOptions,
                       on_frames: Callable[[int], object]) -> Iterator[EncodedBag]:
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    with SiglipEncoder.open(manifest, backend=options.backend, mode=options.mode, cores=options.cores,
                            threads=options.threads) as encoder:
        for path, digest in todo:
            yield path, digest, encode_one(path, digest, encoder, identity, sampling, on_frames)


class _Bars:
    """Two progress bars, bags and frames; no output when disabled."""

    def __init__(self, enabled: bool, bags: int, frames: int) -> None:
        self._bags = self._frames = None
        self._frames_seen = 0
        if enabled:
            from tqdm import tqdm

            self._bags = tqdm(total=bags, unit="bag", desc="index_bags: bags", position=0, file=sys.stderr)
            self._frames = tqdm(total=frames or None, unit="frame", desc="index_bags: frames", position=1,
                                file=sys.stderr)

    def frame(self, count: int) -> None:
        self._frames_seen += count
        if self._frames is not None:
            self._frames.update(count)

    def bag_done(self, frames: int) -> None:
        if self._bags is not None:
            self._bags.update(1)
        if self._frames is not None and self._frames_seen == 0:  # Ray: frames are known when the bag is back
            self._frames.update(frames)
        self._frames_seen = 0

    def close(self) -> None:
        for bar in (self._frames, self._bags):
            if bar is not None:
                bar.close()
