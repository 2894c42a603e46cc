"""Measuring an open encoder: throughput and latency with the encoder kept full, and per-shard call times per core.

Used by ``bench``, ``selfcheck`` and ``benchmarks/``; numpy only, so it runs on the robot. With the ``sim`` backend
the times are divided by its ``time_scale`` so they read as the board would show them.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rk_siglip_ros.measure.profile_fit import CallTime
from rk_siglip_ros.runtime.backends.base import core_indices, format_core
from rk_siglip_ros.runtime.timing import attention_is_tiled, shard_gmacs


@dataclass
class BenchResult:
    shards: str
    profile: str  # the shard set's build profile (whole, pipeline3, seed, ...)
    backend: str
    mode: str
    frames: int
    image_size: tuple[int, int]  # (height, width) of the input frames
    latency_p50_ms: float
    latency_p95_ms: float
    frames_per_s: float
    compute_ms_per_frame: float  # sum of mean shard-call times: one frame's NPU/CPU work
    host_ms_per_frame: float
    host_fraction: float  # host_ms / compute_ms
    preprocess_ms: float
    scales_ms: float
    postprocess_ms: float
    core_busy: dict[int, float] = field(default_factory=dict)
    shard_ms: dict[str, float] = field(default_factory=dict)
    timing_profile: str = ""  # sim only: the NPU timing profile that produced the times (a prediction)

    @property
    def label(self) -> str:
        timing = f" [{self.timing_profile}]" if self.timing_profile else ""
        return f"{self.profile} x {self.mode}{timing}"


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A camera-sized RGB frame with image-like structure (smooth gradients plus noise), reproducible."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1), y / max(height, 1), 0.5 + 0.5 * np.sin((x + y) / 37.0)], axis=-1) * 200
    return np.clip(base + rng.normal(0, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)


def stream(encoder: Any, image: np.ndarray, frames: int) -> tuple[list[float], float, dict[int, float]]:
    """Feed ``frames`` frames keeping the encoder exactly full (never blocking in submit, so latency is time in the
    encoder). Returns per-frame latencies, the steady-state seconds per frame and per-core busy fractions, both
    measured after the first ``capacity`` frames so that filling the pipeline does not count."""
    slots = threading.Semaphore(encoder.capacity)
    # Frames 0..capacity-1 fill the encoder; the window starts when the last of them completes. In replicas mode
    # frames complete in bursts of `capacity`, so frame counts are rounded up to whole bursts by the caller.
    skip = min(encoder.capacity - 1, max(frames - 2, 0))
    marks: dict[int, float] = {}

    def finished(index: int) -> None:
        marks[index] = time.perf_counter()
        if index == skip:
            encoder.core_busy()  # start the busy window with the pipeline full
        slots.release()

    futures = []
    start = time.perf_counter()
    for index in range(frames):
        slots.acquire()
        future = encoder.submit(image)
        future.add_done_callback(lambda _, i=index: finished(i))
        futures.append(future)
    latencies = [future.result().latency_s for future in futures]
    while len(marks) < frames:  # done callbacks may still be running
        time.sleep(0.001)
    busy = encoder.core_busy()
    last = frames - 1
    period = (marks[last] - marks[skip]) / (last - skip) if last > skip else marks[last] - start
    return latencies, period, busy


def bench_encoder(encoder: Any, frames: int = 20, warmup: int = 2, image_size: tuple[int, int] = (480, 640),
                  time_scale: float = 1.0, label: str | None = None, timing_profile: str = "") -> BenchResult:
    """Measure an open SiglipEncoder. ``time_scale``: the sim's factor, divided out so times read as on the board."""
    image = synthetic_frame(*image_size)
    frames = -(-max(frames, 2 * encoder.capacity) // encoder.capacity) * encoder.capacity  # whole bursts
    encoder.encode_batch([image] * max(warmup, 0))
    encoder.reset_stats()
    latencies, period, busy = stream(encoder, image, frames)
    host = encoder.host_times()
    shard_s = encoder.shard_times()
    unscale = 1.0 / time_scale
    # Preprocessing runs in real time even when the sim runs faster: only the rest of the latency is unscaled.
    latencies = [(latency - host.preprocess_s) * unscale + host.preprocess_s for latency in latencies]
    compute_ms = sum(shard_s.values()) * 1000 * unscale
    host_ms = host.total_s * 1000
    manifest = encoder.manifest
    return BenchResult(
        shards=label or str(manifest.root), profile=manifest.profile, backend=encoder.backend.name, mode=encoder.mode,
        frames=frames, image_size=tuple(image_size),
        latency_p50_ms=float(np.percentile(latencies, 50)) * 1000,
        latency_p95_ms=float(np.percentile(latencies, 95)) * 1000,
        frames_per_s=1.0 / (period * unscale), compute_ms_per_frame=compute_ms, host_ms_per_frame=host_ms,
        host_fraction=host_ms / compute_ms if compute_ms > 0 else float("nan"),
        preprocess_ms=host.preprocess_s * 1000, scales_ms=host.scales_s * 1000,
        postprocess_ms=host.postprocess_s * 1000,
        core_busy={core: round(fraction, 4) for core, fraction in busy.items()},
        shard_ms={name: seconds * 1000 * unscale for name, seconds in shard_s.items()},
        timing_profile=timing_profile,
    )


@dataclass(frozen=True)
class ShardCall:
    """The median time of one shard's calls on one core (or one multi-core context), in board milliseconds; for a
    split shard set, of one part (``shard`` names its rows: ``l3[342:683]``)."""

    shards: str
    shard: str
    core: int | tuple[int, ...]
    ms: float
    calls: int
    sample: CallTime  # the same measurement in the fitter's terms (GMACs, tiled, cores)


def shard_call_times(encoder: Any, frames: int = 3, warmup: int = 1, time_scale: float = 1.0,
                     image_size: tuple[int, int] = (480, 640), label: str = "") -> list[ShardCall]:
    """Encode ``frames`` frames one at a time and return each (shard, core) pair's median call time.

    The encoder must have been opened with ``trace=True``; frames go one at a time so no other shard competes for
    the NPU (or its memory) while a call is timed.
    """
    trace = encoder.scheduler.trace
    if trace is None:
        raise ValueError("shard_call_times needs an encoder opened with trace=True")
    image = synthetic_frame(*image_size)
    for _ in range(max(warmup, 0)):
        encoder.encode(image)
    trace.clear()
    for _ in range(max(frames, 1)):
        encoder.encode(image)
    times: dict[tuple[int, Any], list[float]] = {}
    for event in list(trace):
        times.setdefault((event.shard, event.core), []).append((event.end - event.start) * 1000 / time_scale)
    manifest = encoder.manifest
    tiled = attention_is_tiled(manifest)
    calls = []
    for (index, core), values in sorted(times.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        call, shard_index = encoder.call_shard(index)  # a part of a split stage is timed like any shard
        dense, attention = shard_gmacs(manifest, manifest.shards[shard_index])
        median = statistics.median(values)
        group = len(core_indices(core))
        name = label or str(manifest.root)
        sample = CallTime(1.0, dense, attention, median, tiled=tiled, cores=group,
                          label=f"{name} {call} on {format_core(core)}")
        calls.append(ShardCall(name, call, core, median, len(values), sample))
    return calls


def set_names(results: Sequence[BenchResult]) -> dict[str, str]:
    """The name each shard set goes by in tables: its build profile, or its folder name when two sets share a
    profile (e.g. the seed cut with and without attention tiles)."""
    by_profile: dict[str, set[str]] = {}
    for r in results:
        by_profile.setdefault(r.profile, set()).add(r.shards)
    return {r.shards: r.profile if len(by_profile[r.profile]) == 1 else Path(r.shards).name for r in results}


def format_table(results: Sequence[BenchResult]) -> str:
    names = set_names(results)
    timed = any(r.timing_profile for r in results)
    header = ("shard set", "mode", *(("timing profile",) if timed else ()), "backend", "shards", "p50 ms", "p95 ms",
              "frames/s", "core busy %", "host ms", "host %")
    first_number = header.index("shards")
    rows = [header]
    for r in results:
        busy = "/".join(f"{100 * r.core_busy[c]:.0f}" for c in sorted(r.core_busy))
        rows.append((names[r.shards], r.mode, *((r.timing_profile,) if timed else ()), r.backend, str(len(r.shard_ms)),
                     f"{r.latency_p50_ms:.1f}", f"{r.latency_p95_ms:.1f}", f"{r.frames_per_s:.2f}", busy,
                     f"{r.host_ms_per_frame:.2f}", f"{100 * r.host_fraction:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if i >= first_number else cell.ljust(width) for i, (cell, width)
                       in enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def verdict(results: Sequence[BenchResult]) -> str:
    """The fastest configuration for throughput and for latency; with several sim timing profiles, one line each
    (the range the prediction spans), never one number presented as the board."""
    if not results:
        return "no results"
    lines = []
    names = set_names(results)
    timings = list(dict.fromkeys(r.timing_profile for r in results))
    for timing in timings:
        group = [r for r in results if r.timing_profile == timing]
        fastest = max(group, key=lambda r: r.frames_per_s)
        quickest = min(group, key=lambda r: r.latency_p50_ms)
        prefix = f"[{timing}] " if timing else ""
        lines.append(f"{prefix}highest throughput: {names[fastest.shards]} x {fastest.mode} "
                     f"({fastest.frames_per_s:.2f} frames/s, {fastest.shards})")
        lines.append(f"{prefix}lowest latency:     {names[quickest.shards]} x {quickest.mode} "
                     f"({quickest.latency_p50_ms:.1f} ms p50, {quickest.shards})")
    if len(timings) > 1:
        best = [max(r.frames_per_s for r in results if r.timing_profile == t) for t in timings]
        quick = [min(r.latency_p50_ms for r in results if r.timing_profile == t) for t in timings]
        lines.append(f"predicted range over {len(timings)} timing profiles: {min(best):.2f}-{max(best):.2f} frames/s "
                     f"at best, {min(quick):.0f}-{max(quick):.0f} ms lowest latency (sim predictions, not a "
                     "measurement of a board)")
    return "\n".join(lines)
