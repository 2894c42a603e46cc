"""The node's open-vocabulary labels, ROS-free: the label set in use, changed at run time, and per-frame scoring.

The text tower runs once per change of ``labels`` (opened, run on every label, closed again: its weights do not
stay in memory between changes); per frame only an (L x D) @ (D) product and a top-k remain. A change is checked
and embedded completely before it replaces the labels in use, so a frame is always scored against one whole set.

At start the labels are embedded before the node runs. A run-time change is embedded in a background thread (on a
CPU the text tower takes tens of ms per label: a thousand labels take minutes, far longer than a parameter service
call may block the node's executor); the previous labels stay in use until the new ones are ready, and a newer
change supersedes an older one still being embedded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rk_siglip_ros.text import LabelSet

# label_set(labels) -> LabelSet: embeds the labels with the shard set's text tower (TextError / ManifestError).
EmbedLabels = Callable[[list[str]], LabelSet]
# on_done(label_set or None, error or None, seconds): how a background change ended.
ChangeDone = Callable[[LabelSet | None, BaseException | None, float], None]


def text_tower_embedder(shards: Path) -> EmbedLabels:
    """Embed labels with the text tower of the shard set in ``shards``, opening it for each change only."""

    def embed(labels: list[str]) -> LabelSet:
        from rk_siglip_ros.text import TextEncoder

        with TextEncoder.open(shards) as text:
            return text.label_set(labels)

    return embed


def check_text_tower(shards: Path) -> None:
    """TextError / ManifestError unless the shard set has a text tower (its manifest only: quick)."""
    from rk_siglip_ros.text import text_manifest

    text_manifest(shards)


class NodeLabels:
    """The labels in use (none = off) and their top k; :meth:`classify` is called from the dispatcher thread."""

    def __init__(self, embed: EmbedLabels, top_k: int) -> None:
        self._embed = embed
        self._lock = threading.Lock()  # guards _generation / _worker; frames read _active without it (one reference)
        self._active: LabelSet | None = None
        self._top_k = int(top_k)
        self._generation = 0
        self._worker: threading.Thread | None = None

    @property
    def count(self) -> int:
        active = self._active
        return 0 if active is None else len(active)

    @property
    def top_k(self) -> int:
        return self._top_k

    @property
    def changing(self) -> bool:
        """A background change is still being embedded."""
        worker = self._worker
        return worker is not None and worker.is_alive()

    def set_labels(self, labels: Sequence[str]) -> LabelSet | None:
        """Replace the labels now (already checked by node.config.check_labels; empty = off), running the text tower
        in this thread. Raises TextError / ManifestError, and the labels in use stay."""
        with self._lock:
            self._generation += 1  # supersedes any background change still running
        label_set = self._embed(list(labels)) if labels else None
        self._active = label_set
        return label_set

    def change_labels(self, labels: Sequence[str], on_done: ChangeDone) -> None:
        """Replace the labels (checked, not empty: :meth:`set_labels` turns them off) once the text tower has embedded
        them in a background thread. ``on_done`` is called from that thread; a newer change makes an older one's result
        be dropped."""
        if not labels:
            raise ValueError("change_labels needs labels; set_labels(()) turns them off")
        with self._lock:
            self._generation += 1
            generation = self._generation
            worker = threading.Thread(target=self._change, args=(list(labels), generation, on_done),
                                      name="labels-text-tower", daemon=True)
            self._worker = worker
        worker.start()

    def _change(self, labels: list[str], generation: int, on_done: ChangeDone) -> None:
        started = time.monotonic()
        try:
            label_set = self._embed(labels)
        except Exception as error:  # noqa: BLE001 - reported through on_done; the labels in use stay
            on_done(None, error, time.monotonic() - started)
            return
        with self._lock:
            superseded = generation != self._generation
            if not superseded:
                self._active = label_set
        if not superseded:
            on_done(label_set, None, time.monotonic() - started)

    def wait(self, timeout: float | None = None) -> bool:
        """Until no background change is running; False on timeout."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not self.changing

    def set_top_k(self, top_k: int) -> None:
        self._top_k = int(top_k)

    def classify(self, embedding: np.ndarray) -> list[tuple[str, float]] | None:
        """The top k (label, probability) for one unit image embedding, most probable first; None when off."""
        active = self._active
        if active is None:
            return None
        return active.top_k(embedding, self._top_k)
