"""What a replay did, rendered for people, and the progress bar shown while it runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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
    left_out: int = 0  # frames --every did not ask for (not encoded, still copied through)
    every_s: float = 0.0
    dropped_topics: dict[str, str] = field(default_factory=dict)  # topic -> why it could not be copied
    # msgtype -> why the bag's own definition did not parse (the typestore's definition was used instead)
    unparsed_definitions: dict[str, str] = field(default_factory=dict)
    removed_stale_outputs: list[Path] = field(default_factory=list)  # .OUT.partial-* left by killed runs
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    labels: int = 0  # how many labels each frame was scored against (0: none)
    labels_topic: str = ""
    labels_top_k: int = 0

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
        *([f"  labels           {summary.labels} -> {summary.labels_topic} (vision_msgs/Classification, top "
           f"{summary.labels_top_k} per frame)"] if summary.labels else []),
        f"  copied through   {summary.copied_messages} messages",
        *([f"  left out         {summary.left_out} frames (--every {summary.every_s:g} s)"] if summary.every_s else []),
        f"  skipped frames   {len(summary.skipped)}",
    ]
    by_topic = Counter(f"{frame.topic}: {frame.reason}" for frame in summary.skipped)
    lines += [f"    {count} x {what}" for what, count in by_topic.most_common()]
    lines += [f"  NOT copied       {topic}: {why}" for topic, why in summary.dropped_topics.items()]
    lines += [f"  bag definition   {msgtype} did not parse ({why}); read with the {summary.typestore} typestore's"
              for msgtype, why in summary.unparsed_definitions.items()]
    lines += [f"  cleaned up       {path} (left by a killed run)" for path in summary.removed_stale_outputs]
    return "\n".join(lines)


class _NoBar:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    # rate_noinv: always frames/s, where tqdm would flip slow rates to s/frame
    return tqdm(total=total or None, unit="frame", desc="encode_bag", dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]")
