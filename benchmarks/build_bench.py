"""Full-size shard builds: wall time, peak RSS, shard count and RKNN-simulator cosines per profile.

Builds ``random:siglip-base-patch16-512`` (SigLIP-B/16 @ 512: 1024 tokens, 12 layers, 768 wide) with the ``seed``
and ``pipeline3`` profiles, ONNX + RKNN, verified, each in its own child process so its peak RSS is its own
(os.wait4 returns that child's rusage). Goals (the project's): each build <= 10 min and <= 8 GB here, RKNN-sim end to
end >= 0.999. Run by `make bench` (benchmarks/run_all.py), not by the tests: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 600.0
GOAL_RSS_GB = 8.0
GOAL_COS = 0.999


def run_build(model: str, profile: str, out: Path, extra: list[str]) -> dict[str, object]:
    """One build_shards run in a child process; returns its measurements and the manifest's verification."""
    command = [sys.executable, "-m", "rk_siglip_ros.cli.build_shards", "--model", model, "--out", str(out),
               "--profile", profile, "--force", "--quiet", *extra]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        # wait4 reaps this child and returns its own rusage (Popen.wait would discard it)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = code = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        table, errors = stdout.read().strip(), stderr.read().strip()
    result: dict[str, object] = {"profile": profile, "exit": code, "wall_s": wall, "table": table,
                                 "error": errors.splitlines()[-1] if code and errors else "",
                                 "peak_rss_gb": usage.ru_maxrss / 1024**2}  # ru_maxrss is in KiB on Linux
    manifest_path = out / "manifest.json"
    if code == 0 and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        verification = manifest["verification"]
        result.update(shards=len(manifest["shards"]), onnx_cos=verification.get("onnx_vs_fp32_cos"),
                      rknn_cos=verification.get("rknn_sim_vs_fp32_cos"),
                      rknn_min_shard_cos=min((entry.get("rknn_sim_cos") or 1.0)
                                             for entry in verification["per_shard"]))
    return result


def format_row(result: dict[str, object]) -> str:
    def number(key: str, fmt: str) -> str:
        value = result.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    verdict = "ok" if (result["exit"] == 0 and float(result["wall_s"]) <= GOAL_SECONDS
                       and (result.get("peak_rss_gb") or 0) <= GOAL_RSS_GB
                       and (result.get("rknn_cos") or 0) >= GOAL_COS) else "MISSED"
    return (f"{result['profile']:<10} {result['exit']!s:>4} {number('wall_s', '8.1f')} {number('peak_rss_gb', '8.2f')} "
            f"{number('shards', '6d')} {number('onnx_cos', '10.7f')} {number('rknn_cos', '10.7f')} "
            f"{number('rknn_min_shard_cos', '10.7f')}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:siglip-base-patch16-512")
    parser.add_argument("--profiles", default="seed,pipeline3", help="comma-separated (default: %(default)s)")
    parser.add_argument("--formats", default="onnx,rknn")
    parser.add_argument("--keep", type=Path, help="build into this folder and keep the shard sets")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="build-bench-") as scratch:
        root = args.keep or Path(scratch)
        results = []
        for profile in args.profiles.split(","):
            results.append(run_build(args.model, profile, root / profile, ["--formats", args.formats]))
            print(f"[{profile}] done in {results[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    print(f"build_shards benchmark: {args.model}, formats {args.formats}, {os.cpu_count()} CPUs")
    print(f"goals: wall <= {GOAL_SECONDS:.0f} s, peak RSS <= {GOAL_RSS_GB:.0f} GB, RKNN-sim end to end >= {GOAL_COS}")
    print(f"{'profile':<10} {'exit':>4} {'wall s':>8} {'RSS GB':>8} {'shards':>6} {'ONNX cos':>10} {'RKNN cos':>10} "
          f"{'min shard':>10}")
    for result in results:
        print(format_row(result))
    for result in results:
        if result["error"]:
            print(f"{result['profile']}: {result['error']}")
        elif result["table"]:
            print(f"\n{result['profile']} per shard:\n{result['table']}")
    return 0 if all(result["exit"] == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
