"""`bench`: measure shard sets x scheduler modes on one backend, and say which configuration is fastest.

    bench --shards shards/siglip-b16-512-pipeline3 shards/siglip-b16-512-whole --backend rknnlite \\
          --modes sequential,pipeline,replicas --frames 30 --json bench.json --plot bench.png

Per configuration: latency p50/p95 (submit -> embedding, with the encoder kept full), steady-state throughput (after
the pipeline has filled), mean time per shard call, per-core busy % (steady state), and host overhead per frame
(preprocess + host scales + postprocess) against the frame's compute. With ``--backend sim`` nothing is computed: the
timing profile predicts the board (times are reported unscaled, as the board would show them).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import EXIT_OK, EXIT_STATUS_HELP, EXIT_USAGE, add_encoder_options, run_tool


@dataclass
class BenchResult:
    shards: str
    profile: str
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

    @property
    def label(self) -> str:
        return f"{self.profile} x {self.mode}"


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
                  time_scale: float = 1.0, label: str | None = None) -> BenchResult:
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
    )


def format_table(results: Sequence[BenchResult]) -> str:
    header = ("profile", "mode", "backend", "shards", "p50 ms", "p95 ms", "frames/s", "core busy %", "host ms",
              "host %")
    rows = [header]
    for r in results:
        busy = "/".join(f"{100 * r.core_busy[c]:.0f}" for c in sorted(r.core_busy))
        rows.append((r.profile, r.mode, r.backend, str(len(r.shard_ms)), f"{r.latency_p50_ms:.1f}",
                     f"{r.latency_p95_ms:.1f}", f"{r.frames_per_s:.2f}", busy, f"{r.host_ms_per_frame:.2f}",
                     f"{100 * r.host_fraction:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if i >= 3 else cell.ljust(width) for i, (cell, width)
                       in enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def verdict(results: Sequence[BenchResult]) -> str:
    if not results:
        return "no results"
    fastest = max(results, key=lambda r: r.frames_per_s)
    quickest = min(results, key=lambda r: r.latency_p50_ms)
    text = f"highest throughput: {fastest.label} ({fastest.frames_per_s:.2f} frames/s, {fastest.shards})"
    text += f"\nlowest latency:     {quickest.label} ({quickest.latency_p50_ms:.1f} ms p50, {quickest.shards})"
    return text


def plot(results: Sequence[BenchResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in results]
    figure, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(results) + 4), 4.5))
    left.bar(labels, [r.frames_per_s for r in results], color="tab:blue")
    left.set_ylabel("frames / s")
    left.set_title("throughput")
    right.bar(labels, [r.latency_p50_ms for r in results], color="tab:orange", label="p50")
    right.scatter(labels, [r.latency_p95_ms for r in results], color="black", marker="_", s=400, label="p95")
    right.set_ylabel("ms")
    right.set_title("latency")
    right.legend()
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=45)
        for tick in axis.get_xticklabels():
            tick.set_horizontalalignment("right")
    backend = results[0].backend if results else ""
    figure.suptitle(f"rk_siglip_ros bench ({backend})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0], epilog=EXIT_STATUS_HELP)
    add_encoder_options(parser, several_shards=True, several_modes=True)
    parser.add_argument("--frames", type=int, default=20,
                        help="frames measured per configuration, rounded up to a multiple of the encoder's capacity "
                             "(default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="frames run before measuring (default 2)")
    parser.add_argument("--image-size", default="640x480", help="input frame WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--timing-profile", default=None, help="sim: packaged profile name or JSON file")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="sim: run this much faster than real time (results are reported unscaled)")
    parser.add_argument("--json", type=Path, help="write all results as JSON here")
    parser.add_argument("--plot", type=Path, help="write a throughput/latency chart (PNG) here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        width, height = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        print("bench: error: --image-size is WIDTHxHEIGHT, e.g. 640x480", file=sys.stderr)
        return EXIT_USAGE
    if args.frames < 1:
        print("bench: error: --frames must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    return run_tool("bench", lambda: _run(args, width, height))


def _run(args: argparse.Namespace, width: int, height: int) -> int:
    from ..encoder import SiglipEncoder
    from ..manifest import load_manifest

    modes, cores = args.modes, args.cores

    time_scale = args.time_scale if args.backend == "sim" else 1.0
    results: list[BenchResult] = []
    for shards in args.shards:
        manifest = None
        for mode in modes:
            # One manifest per shard set: the first open() hashes the files its backend loads, later modes
            # reuse that verification instead of hashing the (large) shard files again.
            manifest = manifest or load_manifest(shards, verify=())
            encoder = SiglipEncoder.open(manifest, backend=args.backend, mode=mode, cores=cores,
                                         timing_profile=args.timing_profile, time_scale=time_scale)
            with encoder:
                result = bench_encoder(encoder, frames=args.frames, warmup=args.warmup,
                                       image_size=(height, width), time_scale=time_scale, label=str(shards))
            results.append(result)
            print(f"  {result.label:<24} {result.frames_per_s:7.2f} frames/s  p50 {result.latency_p50_ms:8.1f} ms",
                  file=sys.stderr, flush=True)
    print(format_table(results))
    print(verdict(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
