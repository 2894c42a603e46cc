"""`make bench`: every benchmark, one after another, each in its own process (so peak-RSS figures are per
benchmark). Full-size SigLIP-B/16@512 work lives here, never in the test suite. Exit status is non-zero if any
benchmark failed to run; goals missed are printed, not asserted.

ros_bench.py needs a ROS 2: the one already sourced (ROS_DISTRO set), else the tree the Makefile's ROS_TREE names
(passed as RK_SIGLIP_ROS_TREE; run by hand: $RK_SIGLIP_SHARED/ros2-humble, else ../shared/ros2-humble), sourced for
that benchmark only; without either it prints one SKIP line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("build_bench.py", "runtime_bench.py", "model_table.py", "fault_bench.py", "text_bench.py",
              "fleet_bench.py", "ros_bench.py")
NEEDS_ROS = {"ros_bench.py"}
SHARED = Path(os.environ.get("RK_SIGLIP_SHARED") or HERE.parent.parent / "shared")
ROS_TREE = Path(os.environ.get("RK_SIGLIP_ROS_TREE") or SHARED / "ros2-humble")


def command(script: Path, args: list[str]) -> list[str] | None:
    """How to run a benchmark; for one that needs ROS 2, with a ROS 2 sourced (None: there is none)."""
    plain = [sys.executable, str(script), *args]
    if script.name not in NEEDS_ROS or os.environ.get("ROS_DISTRO"):
        return plain
    setup = ROS_TREE / "setup.bash"
    if not setup.is_file():
        return None
    return ["bash", "-c", f'. "{setup}" && exec "$0" "$@"', *plain]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        script = HERE / name
        print(f"\n===== {name} =====", flush=True)
        argv = command(script, sys.argv[1:])
        if argv is None:
            print(f"SKIP {name}: no ROS 2 (ROS_DISTRO is not set and {ROS_TREE}/setup.bash does not exist): source "
                  "/opt/ros/<distro>/setup.bash first", flush=True)
            continue
        started = time.perf_counter()
        result = subprocess.run(argv, check=False)
        print(f"===== {name}: exit {result.returncode}, {time.perf_counter() - started:.0f} s =====", flush=True)
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
