"""`selfcheck`: measure this board's NPU with your shard sets, fit a timing profile, write the fastest configuration.

    selfcheck --shards shards/b16-whole shards/b16-pipeline3 shards/b16-seed --out selfcheck_out
    ros2 launch rk_siglip_ros encoder.launch.py params_file:=selfcheck_out/throughput.params.yaml

Runs every shard set with every scheduler mode, times each shard on each core alone and on one context spanning
all cores, fits a timing profile (per-call overhead, dense and attention rates, all-cores speedups) by least squares
and prints how well it explains the measurements. Writes into --out: profile.json (use it with `bench --backend sim
--timing-profile selfcheck_out/profile.json`), throughput.params.yaml and latency.params.yaml (params files for the
launch file), report.json. Also reports librknnrt against the shard sets' rknn-toolkit2, the NPU driver and clock.
Give shard sets of several cuts (e.g. whole, pipeline3 and seed): the fit needs shards that differ in size and in
their attention share. Off the board, --backend sim measures the timing simulation (and recovers its profile).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rk_siglip_ros.cli.common import (
    EXIT_OK,
    EXIT_STATUS_HELP,
    add_encoder_options,
    parse_image_size,
    positive_int,
    run_tool,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="selfcheck", description=__doc__.split("\n\n")[0],
                                     epilog=f"{__doc__.split(chr(10) * 2, 2)[2]}\n{EXIT_STATUS_HELP}",
                                     formatter_class=argparse.RawTextHelpFormatter)
    add_encoder_options(parser, several_shards=True, several_modes=True)
    parser.add_argument("--out", type=Path, default=Path("selfcheck_out"), help="output folder (default selfcheck_out)")
    parser.add_argument("--frames", type=positive_int, default=10, help="frames per shard set x mode (default 10)")
    parser.add_argument("--call-frames", type=positive_int, default=3,
                        help="frames per core when timing shard calls, one at a time (default 3)")
    parser.add_argument("--image-size", type=parse_image_size, default="640x480",
                        help="input frame WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--timing-profile", default=None, help="sim only: the profile that generates the times")
    parser.add_argument("--time-scale", type=float, default=1.0, help="sim only: run this much faster than real time")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool("selfcheck", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rk_siglip_ros.manifest import load_manifest
    from rk_siglip_ros.measure.bench import format_table, set_names
    from rk_siglip_ros.measure.selfcheck import per_core_ratios, run_selfcheck, step_count

    # The manifests are read (not verified) twice, here and in run_selfcheck: a few kB of JSON each, so that the
    # bar's total leaves out the modes a shard set cannot run.
    steps = step_count([load_manifest(folder, verify=()) for folder in args.shards], len(args.cores), args.modes)
    bar = tqdm(total=steps, unit="step", desc="selfcheck", file=sys.stderr, dynamic_ncols=True, disable=args.quiet)
    started = [False]

    def progress(line: str) -> None:
        if started[0]:
            bar.update(1)
        started[0] = True
        bar.set_postfix_str(line, refresh=True)

    try:
        report = run_selfcheck(args.shards, args.out, backend=args.backend, cores=args.cores, modes=args.modes,
                               frames=args.frames, call_frames=args.call_frames, timing_profile=args.timing_profile,
                               time_scale=args.time_scale, image_size=args.image_size, progress=progress)
        bar.update(1)
    finally:
        bar.close()
    print(f"board ({report.backend}):")
    for line in report.facts.lines():
        print(f"  {line}")
    if report.fit is None:
        print(f"\nno timing profile fitted: {report.fit_problem}")
    else:
        print(f"\nfitted timing profile ({len(report.calls)} shard x core measurements):")
        for line in report.fit.summary().splitlines():
            print(f"  {line}")
        if report.backend == "sim" and args.time_scale < 1:
            print(f"  note: --time-scale {args.time_scale} divides the host's own time around each call (real time) "
                  f"by {args.time_scale} too, so the per-call term comes out high; --time-scale 1 recovers the sim's "
                  "profile")
        ratios = per_core_ratios(report.fit)
        print("  measured / fitted per core: " + ", ".join(f"{where} {ratio:.3f}" for where, ratio in ratios.items()))
    print()
    print(format_table(report.results))
    names = set_names(report.results)
    for choice in report.choices:
        print(f"best for {choice.goal:<10}: {names[choice.result.shards]} x {choice.result.mode} "
              f"({choice.result.frames_per_s:.2f} frames/s, p50 {choice.result.latency_p50_ms:.0f} ms, "
              f"{choice.result.shards}) -> {choice.params_file}")
    print(f"profile: {report.profile_file or 'not written'}   report: {args.out / 'report.json'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
