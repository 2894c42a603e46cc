"""Model table for `make bench`: what each SigLIP checkpoint a robot might pick costs on the RK3588 NPU, predicted by
the timing model (the sim backend) under every packaged timing profile, beside its published zero-shot accuracy.

(a) SigLIP-B/16@512 side by side in one run: split x split against the vendor's whole x allcores, with the time of
    every part, under each profile (goal: split <= 0.8x of whole x allcores under rk3588-fp16-rk1);
(b) per checkpoint (random weights in the checkpoint's shape): frames/s at the best-throughput configuration and
    latency at the best-latency configuration (shard set x mode), the shard set's weight size and parameter count.

Shard sets are planned, not built (rk_siglip_ros.builder.build.planned_manifest: a meta-device tower, no weights):
the sim reads only the manifest. Every figure is a prediction of the timing model, never a board measurement.
Goals missed are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# preset -> (name in the table, published ImageNet-1k zero-shot top-1 %, source). None: not found in the sources
# this project could consult; never a guess.
CHECKPOINTS: dict[str, tuple[str, float | None, str]] = {
    "siglip-base-patch16-224": ("SigLIP B/16 @224", None, ""),
    "siglip-base-patch16-256": ("SigLIP B/16 @256", None, ""),
    "siglip-base-patch16-384": ("SigLIP B/16 @384", None, ""),
    "siglip-base-patch16-512": ("SigLIP B/16 @512", None, ""),
    "siglip-large-patch16-256": ("SigLIP L/16 @256", None, ""),
    "siglip-large-patch16-384": ("SigLIP L/16 @384", None, ""),
    "siglip-so400m-patch14-224": ("SigLIP So400m/14 @224", None, ""),
    "siglip-so400m-patch14-384": ("SigLIP So400m/14 @384", None, ""),
    "smolvlm-vision-512": ("SmolVLM-256M tower @512", None, ""),
}
# (build profile, mode): the configurations the table compares (split mode runs split sets only)
CONFIGURATIONS = (("whole", "sequential"), ("whole", "replicas"), ("whole", "allcores"), ("pipeline3", "pipeline"),
                  ("split", "split"))


def planned_sets(preset: str, out: Path) -> dict[str, Path]:
    """Manifest-only shard sets (no files) for each build profile of the table."""
    from rk_siglip_ros.builder.build import planned_manifest
    from rk_siglip_ros.manifest import save_manifest

    folders = {}
    for profile in dict.fromkeys(p for p, _ in CONFIGURATIONS):
        folder = out / preset / profile
        folder.mkdir(parents=True, exist_ok=True)
        save_manifest(planned_manifest(f"random:{preset}", profile=profile), folder)
        folders[profile] = folder
    return folders


def weights(preset: str) -> int:
    """Parameters of the vision tower (what the shard set stores: fp16 .rknn at 2 bytes each)."""
    from rk_siglip_ros.builder.models import shape_only_tower

    return sum(parameter.numel() for parameter in shape_only_tower(f"random:{preset}").module.parameters())


def measure(folder: Path, mode: str, timing: str, frames: int, time_scale: float) -> dict[str, object]:
    from rk_siglip_ros.manifest import load_manifest
    from rk_siglip_ros.measure.bench import bench_encoder
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    with SiglipEncoder.open(load_manifest(folder, verify=()), backend="sim", mode=mode, timing_profile=timing,
                            time_scale=time_scale) as encoder:
        return asdict(bench_encoder(encoder, frames=frames, warmup=1, time_scale=time_scale, timing_profile=timing))


def side_by_side(folders: dict[str, Path], timings: list[str], frames: int, time_scale: float) -> list[dict]:
    print("\n(a) SigLIP-B/16@512: split x split against whole x allcores, one run (sim predictions)", flush=True)
    rows = []
    for timing in timings:
        vendor = measure(folders["whole"], "allcores", timing, frames, time_scale)
        split = measure(folders["split"], "split", timing, frames, time_scale)
        ratio = split["latency_p50_ms"] / vendor["latency_p50_ms"]
        goal = "" if timing != "rk3588-fp16-rk1" else f" (goal <= 0.8: {'met' if ratio <= 0.8 else 'MISSED'})"
        print(f"  [{timing}] whole x allcores {vendor['latency_p50_ms']:.0f} ms, split x split "
              f"{split['latency_p50_ms']:.0f} ms p50: x{ratio:.2f}{goal}")
        print("    split ms per call: " + ", ".join(f"{k} {v:.1f}" for k, v in split["shard_ms"].items()))
        rows.append({"timing_profile": timing, "whole_allcores": vendor, "split": split, "ratio": ratio})
    return rows


def table(out: Path, timings: list[str], frames: int, time_scale: float) -> list[dict]:
    print("\n(b) per checkpoint: best throughput and best latency (shard set x mode), sim predictions", flush=True)
    rows = []
    for preset, (name, accuracy, source) in CHECKPOINTS.items():
        folders = planned_sets(preset, out)
        params = weights(preset)
        row: dict[str, object] = {"preset": preset, "name": name, "params_m": params / 1e6,
                                  "rknn_fp16_mb": 2 * params / 2**20, "accuracy": accuracy, "source": source}
        for timing in timings:
            results = [(profile, mode, measure(folders[profile], mode, timing, frames, time_scale))
                       for profile, mode in CONFIGURATIONS]
            fast = max(results, key=lambda r: r[2]["frames_per_s"])
            quick = min(results, key=lambda r: r[2]["latency_p50_ms"])
            row[timing] = {"throughput": (fast[0], fast[1], fast[2]["frames_per_s"]),
                           "latency": (quick[0], quick[1], quick[2]["latency_p50_ms"])}
            print(f"  {name:<24} [{timing:<15}] {fast[2]['frames_per_s']:5.2f} frames/s ({fast[0]} x {fast[1]}), "
                  f"{quick[2]['latency_p50_ms']:6.0f} ms ({quick[0]} x {quick[1]}); {params / 1e6:.0f} M params, "
                  f"{2 * params / 2**20:.0f} MB fp16", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from rk_siglip_ros.runtime.timing import DEFAULT_PROFILE, available_profiles

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "model_table")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--time-scale", type=float, default=0.2, help="sim speed-up (results reported unscaled)")
    parser.add_argument("--only", choices=("split", "table"), help="run only (a) or only (b)")
    args, _ = parser.parse_known_args(argv)  # make bench passes its own arguments to every benchmark
    timings = sorted(available_profiles(), key=lambda t: (t != DEFAULT_PROFILE, t))
    print(f"model_table: timing profiles {', '.join(timings)}; manifests in {args.out}", flush=True)
    report: dict[str, object] = {}
    if args.only != "table":
        report["split"] = side_by_side(planned_sets("siglip-base-patch16-512", args.out), timings, args.frames,
                                       args.time_scale)
    if args.only != "split":
        report["table"] = table(args.out, timings, args.frames, args.time_scale)
    name = "model_table.json" if args.only is None else f"model_table_{args.only}.json"
    (args.out / name).write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
