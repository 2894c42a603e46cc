"""`make bench`: every benchmark, one after another, each in its own process (so peak-RSS figures are per
benchmark). Full-size SigLIP-B/16@512 work lives here, never in the test suite. Exit status is non-zero if any
benchmark failed to run; goals missed are printed, not asserted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("build_bench.py", "runtime_bench.py", "fault_bench.py", "text_bench.py")


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        script = HERE / name
        print(f"\n===== {name} =====", flush=True)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(script), *sys.argv[1:]], check=False)
        print(f"===== {name}: exit {result.returncode}, {time.perf_counter() - started:.0f} s =====", flush=True)
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
