"""`bench`: measure shard sets x scheduler modes on one backend, and say which configuration is fastest.

    bench --shards shards/siglip-b16-512-pipeline3 shards/siglip-b16-512-whole --backend rknnlite \\
          --modes sequential,pipeline,replicas,allcores --frames 30 --json bench.json --plot bench.png

Per configuration: latency p50/p95 (submit -> embedding, with the encoder kept full), steady-state throughput (after
the pipeline has filled), mean time per shard call, per-core busy % (steady state), and host overhead per frame
(preprocess + host scales + postprocess) against the frame's compute. With ``--backend sim`` nothing is computed: the
timing profile predicts the board (times are reported unscaled, as the board would show them); by default every
packaged profile runs side by side, so the prediction reads as the range it is. ``--timing-profile`` also takes a
profile JSON fitted on a board by ``selfcheck``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rk_siglip_ros.cli.common import (
    EXIT_OK,
    EXIT_STATUS_HELP,
    add_encoder_options,
    parse_image_size,
    positive_int,
    run_tool,
)
from rk_siglip_ros.measure.bench import BenchResult, bench_encoder, format_table, verdict


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
    parser.add_argument("--frames", type=positive_int, default=20,
                        help="frames measured per configuration, rounded up to a multiple of the encoder's capacity "
                             "(default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="frames run before measuring (default 2)")
    parser.add_argument("--image-size", type=parse_image_size, default="640x480",
                        help="input frame WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--timing-profile", default=None,
                        help="sim: comma-separated packaged profile names or JSON files (e.g. one selfcheck "
                             "fitted); default: every packaged profile, side by side")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="sim: run this much faster than real time (results are reported unscaled)")
    parser.add_argument("--json", type=Path, help="write all results as JSON here")
    parser.add_argument("--shard-times", action="store_true",
                        help="also print each configuration's mean time per shard call (per part for split sets)")
    parser.add_argument("--plot", type=Path, help="write a throughput/latency chart (PNG) here (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib (pip install matplotlib); leave --plot out to measure without a chart")
    return args


def sim_profiles(option: str | None) -> list[str]:
    """The sim's timing profiles to run: those named (comma-separated), else every packaged one."""
    from rk_siglip_ros.runtime.timing import available_profiles

    named = [name.strip() for name in (option or "").split(",") if name.strip()]
    return named or available_profiles()


def profile_label(timing: str | None) -> str:
    """A timing profile's short name for tables: the packaged name, or a JSON file's stem."""
    if timing is None:
        return ""
    return Path(timing).stem if timing.endswith(".json") else timing


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool("bench", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from rk_siglip_ros.manifest import load_manifest
    from rk_siglip_ros.runtime.encoder import SiglipEncoder, mode_problem

    modes, cores = args.modes, args.cores

    time_scale = args.time_scale if args.backend == "sim" else 1.0
    timing_profiles = sim_profiles(args.timing_profile) if args.backend == "sim" else [None]
    results: list[BenchResult] = []
    for shards in args.shards:
        manifest = None
        for timing in timing_profiles:
            for mode in modes:
                # One manifest per shard set: the first open() hashes the files its backend loads, later modes
                # reuse that verification instead of hashing the (large) shard files again.
                manifest = manifest or load_manifest(shards, verify=())
                if mode_problem(mode, manifest) is not None:  # split mode needs a split shard set
                    print(f"  {shards} x {mode}: skipped (built with --profile {manifest.profile})", file=sys.stderr)
                    continue
                encoder = SiglipEncoder.open(manifest, backend=args.backend, mode=mode, cores=cores,
                                             timing_profile=timing, time_scale=time_scale)
                with encoder:
                    result = bench_encoder(encoder, frames=args.frames, warmup=args.warmup,
                                           image_size=args.image_size, time_scale=time_scale, label=str(shards),
                                           timing_profile=profile_label(timing))
                results.append(result)
                print(f"  {result.label:<40} {result.frames_per_s:7.2f} frames/s  p50 "
                      f"{result.latency_p50_ms:8.1f} ms", file=sys.stderr, flush=True)
    print(format_table(results))
    if args.shard_times:
        for result in results:
            calls = ", ".join(f"{name} {ms:.1f}" for name, ms in result.shard_ms.items())
            print(f"  {result.label}: ms per call: {calls}")
    print(verdict(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
