"""Runtime benchmark for `make bench`: SigLIP-B/16@512 (random weights, full size) on this machine, side by side.

(a) the `whole` vs `pipeline3` vs `seed` shard chains on ONNX Runtime (CPU), per-frame time and ratio to `whole`
    (goal <= 1.05): what sharding itself costs;
(b) host overhead per frame (preprocess + host scales + postprocess) for 640x480 and 1920x1080 inputs, as a fraction
    of one frame's compute (goal <= 1%);
(c) the `sim` NPU prediction per shard set x scheduler mode (sequential, pipeline, replicas and the vendor's
    all-cores context), under every packaged timing profile side by side: a range, never one number as the board
    (goals: a configuration >= 3 frames/s, latency <= 420 ms);
(d) PyTorch eager on the same model: the CPU anchor (timed in the same interleaved loop as (a)).

Shard sets are built once into bench_out/runtime/<profile> (ONNX only) and reused while they verify. Goals missed
are printed, never asserted. Repetitions of (a) are interleaved across profiles so machine load hits all alike.
`--only cpu` runs (a), (b), (d); `--only sim` runs (c).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rk_siglip_ros.manifest import Manifest
from rk_siglip_ros.runtime.scheduler import MODES

ROOT = Path(__file__).resolve().parent.parent
MODEL = "random:siglip-base-patch16-512"
# name -> build_shards options. "seed untiled" separates what the seed's 26-way cut costs from what its 32-token
# attention tiles cost.
PROFILES: dict[str, dict[str, object]] = {
    "whole": {"profile": "whole"},
    "pipeline3": {"profile": "pipeline3"},
    "seed": {"profile": "seed"},
    "seed untiled": {"profile": "seed", "tile": 0},
}
SIZES = ((480, 640), (1080, 1920))


def shard_set(model: str, name: str, out: Path) -> Manifest:
    """The ONNX shard set for ``profile`` (its manifest, root set), built unless a valid one for ``model`` is already
    there. A reused set is hashed once here; the encoders opened from the returned manifest do not hash it again."""
    sys.path.insert(0, str(ROOT / "tools"))  # developer-only modules, not installed with the package
    from shard_reuse import reuse_or_build

    options = PROFILES[name]
    folder = out / name.replace(" ", "-")

    def same_build(manifest: Manifest) -> bool:
        same_tile = "tile" not in options or (manifest.build.get("tile") or 0) == options["tile"]
        return manifest.profile == options["profile"] and same_tile

    started = time.perf_counter()
    manifest, built = reuse_or_build(model, folder, same_build, **options)
    print(f"  built {folder} in {time.perf_counter() - started:.0f} s" if built else f"  reusing {folder}", flush=True)
    return manifest


def chain_times(shard_sets: dict[str, Manifest], reps: int, threads: int, model: str) -> dict[str, list[float]]:
    """Seconds per frame of each profile's chain on ONNX Runtime and of PyTorch eager, one frame at a time, with
    the repetitions interleaved so that load from other processes hits every contender alike."""
    from rk_siglip_ros.measure.bench import synthetic_frame
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    image = synthetic_frame(480, 640)
    encoders = {p: SiglipEncoder.open(m, backend="onnxruntime", mode="sequential", threads=threads)
                for p, m in shard_sets.items()}
    runners = {profile: (lambda e=encoder: e.encode(image)) for profile, encoder in encoders.items()}
    runners["torch eager"] = torch_eager(model, threads, image)
    times: dict[str, list[float]] = {name: [] for name in runners}
    try:
        for run in runners.values():
            run()  # warm-up: first runs allocate
        for _ in range(reps):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    finally:
        for encoder in encoders.values():
            encoder.close()
    return times


def host_overhead(shard_sets: dict[str, Manifest], compute_s: float, frames: int = 5) -> list[dict[str, object]]:
    """Host work per frame (measured through the encoder on the sim backend, so no compute competes with it)."""
    from rk_siglip_ros.measure.bench import synthetic_frame
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    rows = []
    for profile, manifest in shard_sets.items():
        for height, width in SIZES:
            image = synthetic_frame(height, width)
            with SiglipEncoder.open(manifest, backend="sim", mode="sequential", time_scale=0.02) as encoder:
                encoder.encode(image)
                encoder.reset_stats()
                for _ in range(frames):
                    encoder.encode(image)
                host = encoder.host_times()
            rows.append({"profile": profile, "input": f"{width}x{height}", "preprocess_ms": host.preprocess_s * 1e3,
                         "scales_ms": host.scales_s * 1e3, "postprocess_ms": host.postprocess_s * 1e3,
                         "total_ms": host.total_s * 1e3, "fraction_of_compute": host.total_s / compute_s})
    return rows


def sim_predictions(shard_sets: dict[str, Manifest], frames: int, time_scale: float) -> list[dict[str, object]]:
    """Every shard set x mode under every packaged timing profile (reported unscaled)."""
    from dataclasses import asdict

    from rk_siglip_ros.measure.bench import bench_encoder
    from rk_siglip_ros.runtime.encoder import SiglipEncoder
    from rk_siglip_ros.runtime.timing import available_profiles

    rows = []
    for timing in available_profiles():
        for name, manifest in shard_sets.items():
            for mode in MODES:
                with SiglipEncoder.open(manifest, backend="sim", mode=mode, timing_profile=timing,
                                        time_scale=time_scale) as encoder:
                    row = asdict(bench_encoder(encoder, frames=frames, warmup=1, time_scale=time_scale,
                                               timing_profile=timing))
                rows.append({**row, "profile": name})  # the shard set's name: two sets may share a profile
    return rows


def print_sim_table(sim: list[dict[str, object]]) -> None:
    """One row per shard set x mode, one column per timing profile (default first): the prediction's range."""
    from rk_siglip_ros.runtime.timing import DEFAULT_PROFILE

    timings = sorted({str(r["timing_profile"]) for r in sim}, key=lambda t: (t != DEFAULT_PROFILE, t))
    cell = {(r["profile"], r["mode"], r["timing_profile"]): r for r in sim}
    heads = [f"{t}{' (default)' if t == DEFAULT_PROFILE else ''}" for t in timings]
    print(f"  {'shard set':<13} {'mode':<10} " + "  ".join(f"{h:<32}" for h in heads))
    for name in dict.fromkeys(r["profile"] for r in sim):
        for mode in MODES:
            cells = []
            for timing in timings:
                r = cell[(name, mode, timing)]
                busy = "/".join(f"{100 * v:.0f}" for v in r["core_busy"].values())
                cells.append(f"{r['frames_per_s']:5.2f} f/s {r['latency_p50_ms']:6.0f} ms {busy:>9}%")
            print(f"  {name:<13} {mode:<10} " + "  ".join(f"{c:<32}" for c in cells))
    for timing in timings:
        rows = [r for r in sim if r["timing_profile"] == timing]
        best = max(rows, key=lambda r: r["frames_per_s"])
        quick = min(rows, key=lambda r: r["latency_p50_ms"])
        print(f"  [{timing}] fastest: {best['profile']} x {best['mode']} {best['frames_per_s']:.2f} frames/s "
              f"(goal >= 3: {'met' if best['frames_per_s'] >= 3 else 'MISSED'}); lowest latency: {quick['profile']} "
              f"x {quick['mode']} {quick['latency_p50_ms']:.0f} ms (goal <= 420: "
              f"{'met' if quick['latency_p50_ms'] <= 420 else 'MISSED'})")
    best = [max(float(r["frames_per_s"]) for r in sim if r["timing_profile"] == t) for t in timings]
    quick = [min(float(r["latency_p50_ms"]) for r in sim if r["timing_profile"] == t) for t in timings]
    print(f"  predicted range: {min(best):.2f}-{max(best):.2f} frames/s at best, {min(quick):.0f}-{max(quick):.0f} "
          "ms lowest latency (timing simulation under each profile; no board was measured)")


def torch_eager(model: str, threads: int, image: np.ndarray) -> Callable[[], object]:
    """transformers' own forward (fp32, eager) on the HF-preprocessed image: the CPU anchor."""
    import torch

    from rk_siglip_ros.builder.models import hf_image_processor, load_vision_tower

    torch.set_num_threads(threads)
    tower = load_vision_tower(model)
    pixels = hf_image_processor(tower)(images=[image], return_tensors="pt")["pixel_values"]
    return lambda: tower.reference(pixels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "runtime")
    parser.add_argument("--reps", type=int, default=5, help="measured frames per profile for (a) and (d)")
    parser.add_argument("--sim-frames", type=int, default=12)
    parser.add_argument("--time-scale", type=float, default=0.25, help="sim speed-up (results reported unscaled)")
    parser.add_argument("--only", choices=("cpu", "sim"), help="run only (a), (b), (d) on this CPU, or only (c)")
    args, _ = parser.parse_known_args(argv)  # make bench passes its own arguments to every benchmark
    threads = os.cpu_count() or 1
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"runtime_bench: {args.model}, {threads} CPU threads, shard sets in {args.out}", flush=True)
    shard_sets = {name: shard_set(args.model, name, args.out) for name in PROFILES}
    report: dict[str, object] = {"model": args.model, "threads": threads}

    if args.only != "sim":
        print("\n(a) shard chains on ONNX Runtime (CPU) and PyTorch eager, one frame at a time, interleaved",
              flush=True)
        times = chain_times(shard_sets, args.reps, threads, args.model)
        whole = statistics.median(times["whole"])
        for name, values in times.items():
            ratio = statistics.median(values) / whole
            flag = "   <-- goal <= 1.05 missed" if name in PROFILES and ratio > 1.05 else ""
            print(f"  {name:<13} {1e3 * statistics.median(values):8.0f} ms/frame (median of {len(values)}: "
                  f"{', '.join(f'{1e3 * v:.0f}' for v in values)})  x{ratio:.3f} of whole{flag}")
        eager = times.pop("torch eager")

        print("\n(b) host overhead per frame vs one frame's compute (whole on ONNX Runtime)", flush=True)
        host = host_overhead(shard_sets, whole)
        for row in host:
            flag = "" if row["fraction_of_compute"] <= 0.01 else "   <-- goal <= 1% missed"
            print(f"  {row['profile']:<13} {row['input']:>9}: preprocess {row['preprocess_ms']:6.2f} ms, scales "
                  f"{row['scales_ms']:5.2f} ms, postprocess {row['postprocess_ms']:5.2f} ms = "
                  f"{row['total_ms']:6.2f} ms = {100 * row['fraction_of_compute']:.2f}% of {1e3 * whole:.0f} ms{flag}")
        report.update({"chain_s": times, "host": host, "torch_eager_s": eager})

    if args.only != "cpu":
        print(f"\n(c) sim NPU prediction, every packaged timing profile side by side (3 cores, {args.sim_frames} "
              "frames, 640x480; frames/s, latency p50, core busy)", flush=True)
        sim = sim_predictions(shard_sets, args.sim_frames, args.time_scale)
        print_sim_table(sim)
        report["sim"] = sim

    if args.only != "sim":
        print("\n(d) PyTorch eager (transformers, fp32) on the same model, measured in (a)", flush=True)
        print(f"  torch eager {1e3 * statistics.median(eager):8.0f} ms/frame; ONNX Runtime whole takes "
              f"x{whole / statistics.median(eager):.2f} of its time")

    name = "runtime_bench.json" if args.only is None else f"runtime_bench_{args.only}.json"
    (args.out / name).write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
