"""`make test-ros`: the real-ROS suite (every test file in test/ros) once per ROS 2 distro and middleware present.

Combinations, each run only where its ROS 2 tree (and, for Jazzy, its venv) is there:

    humble-cyclone   ../shared/ros2-humble, rmw_cyclonedds_cpp          (.venv, CPython 3.11)
    humble-fastdds   ../shared/ros2-humble, rmw_fastrtps_dynamic_cpp    (the Humble tree's Fast DDS)
    jazzy-fastdds    ../shared/ros2-jazzy, its default (rmw_fastrtps_cpp; RMW_IMPLEMENTATION unset)
                                                                        (.venv-jazzy, CPython 3.12)
    jazzy-cyclone    ../shared/ros2-jazzy, rmw_cyclonedds_cpp

With a ROS 2 already sourced (ROS_DISTRO set, e.g. /opt/ros/jazzy on a robot) the suite runs once, in that
environment, with its RMW_IMPLEMENTATION. Without any, the suite runs once with RK_SIGLIP_NO_ROS set, and every
test skips with the reason.

Each combination is its own pytest session (its own ROS_DOMAIN_ID claim, colcon build and Fast DDS shared-memory
clean-up); the Jazzy venv holds the node's run-time dependencies only (torch has no CPython 3.12 build here), so
shard sets there are built by the 3.11 venv's Python (RK_SIGLIP_BUILDER_PYTHON). Prints each combination's
pytest summary and a table at the end; exits 1 if any combination failed.

    python tools/ros_matrix.py [--only NAME[,NAME]] [pytest arguments]

Development tooling, not part of the installed package.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NO_TESTS_COLLECTED = 5  # pytest's exit code when every test module skipped itself
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|error|errors|xfailed|xpassed|deselected)")


@dataclass(frozen=True)
class Combination:
    name: str
    tree: Path
    venv: Path
    rmw: str | None  # None: the distro's default (RMW_IMPLEMENTATION unset)

    def missing(self) -> str | None:
        """Why this combination cannot run here, or None."""
        if not (self.tree / "setup.bash").is_file():
            return f"no ROS 2 tree at {self.tree}"
        if not (self.venv / "bin" / "python").is_file():
            return f"no venv at {self.venv} (make setup-jazzy)"
        return None


def combinations(shared: Path, venv: Path, jazzy_venv: Path) -> list[Combination]:
    humble, jazzy = shared / "ros2-humble", shared / "ros2-jazzy"
    return [Combination("humble-cyclone", humble, venv, "rmw_cyclonedds_cpp"),
            Combination("humble-fastdds", humble, venv, "rmw_fastrtps_dynamic_cpp"),
            Combination("jazzy-fastdds", jazzy, jazzy_venv, None),
            Combination("jazzy-cyclone", jazzy, jazzy_venv, "rmw_cyclonedds_cpp")]


def counts(output: str) -> dict[str, int]:
    """pytest's closing line as {outcome: count} (the last line that has any)."""
    for line in reversed(output.splitlines()):
        found = SUMMARY.findall(line)
        if found and ("==" in line or " in " in line):
            result: dict[str, int] = {}
            for number, outcome in found:
                outcome = "error" if outcome == "errors" else outcome
                result[outcome] = result.get(outcome, 0) + int(number)
            return result
    return {}


def run(command: str, env: dict[str, str]) -> tuple[int, str]:
    """``bash -c command``, its output passed through as it comes and kept."""
    process = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    return process.wait(), "".join(lines)


def base_environment(builder_python: Path) -> dict[str, str]:
    """This environment without any ROS 2 of a previous combination, plus where shard sets are built."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AMENT_", "COLCON_", "ROS_", "RMW_", "CYCLONEDDS_", "FASTRTPS_", "FASTDDS_"))}
    env["RK_SIGLIP_BUILDER_PYTHON"] = str(builder_python)
    return env


def pytest_command(python: str, pytest_args: list[str]) -> str:
    """pytest on test/ros. The off-ROS modules beside it (test/test_*.py) are ignored outright: Jazzy's launch_testing
    plugin imports every file pytest looks at while collecting, and they need the builder (onnx, torch), which the
    Jazzy venv does not have."""
    return " ".join([shlex.quote(python), "-m", "pytest", "-rs", "test/ros", "--ignore-glob=test/test_*.py",
                     *map(shlex.quote, pytest_args)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="folder holding ros2-humble / ros2-jazzy (default ../shared)")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv", help="the CPython 3.11 venv (make setup)")
    parser.add_argument("--jazzy-venv", type=Path, default=REPO / ".venv-jazzy",
                        help="the CPython 3.12 venv for Jazzy (make setup-jazzy)")
    parser.add_argument("--only", default="", help="comma-separated combination names to run (default: all present)")
    args, pytest_args = parser.parse_known_args(argv)
    builder = args.venv.resolve() / "bin" / "python"
    env = base_environment(builder)
    env["RK_SIGLIP_SHARED"] = str(args.shared.resolve())

    if os.environ.get("ROS_DISTRO"):
        print(f"== real-ROS suite: ROS 2 {os.environ['ROS_DISTRO']} already sourced, "
              f"RMW_IMPLEMENTATION={os.environ.get('RMW_IMPLEMENTATION', '(its default)')}", flush=True)
        code, _ = run(pytest_command(sys.executable, pytest_args),
                      dict(os.environ, RK_SIGLIP_BUILDER_PYTHON=str(builder)))
        return code

    failed = False
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    table: list[tuple[str, str, dict[str, int], float]] = []
    present = []
    for combination in combinations(args.shared.resolve(), args.venv.resolve(), args.jazzy_venv.resolve()):
        reason = combination.missing()
        if wanted and combination.name not in wanted:
            reason = "not selected (--only)"
        if reason:
            table.append((combination.name, f"not run: {reason}", {}, 0.0))
            continue
        present.append(combination)

    if not present:
        print("== real-ROS suite: no ROS 2 tree present and none sourced: every test skips", flush=True)
        env["RK_SIGLIP_NO_ROS"] = ("no ROS 2: source /opt/ros/<distro>/setup.bash, or put a ROS 2 tree at "
                                   f"{args.shared}/ros2-humble")
        code, output = run(pytest_command(str(builder), pytest_args), env)
        code = 0 if code == NO_TESTS_COLLECTED else code  # every module skipped at import: what this run is for
        table.append(("no ROS 2", "skipped" if code == 0 else f"FAILED (exit {code})", counts(output), 0.0))
        failed = code != 0

    for combination in present:
        python = combination.venv / "bin" / "python"
        exports = f"export RMW_IMPLEMENTATION={combination.rmw}" if combination.rmw else "unset RMW_IMPLEMENTATION"
        # venv first: the tree's scripts (ros2, launch_test) run the first python3 on PATH.
        command = (f". {shlex.quote(str(combination.venv / 'bin' / 'activate'))} && "
                   f". {shlex.quote(str(combination.tree / 'setup.bash'))} && {exports} && "
                   f"{pytest_command(str(python), pytest_args)}")
        print(f"\n== real-ROS suite: {combination.name} ({combination.tree.name}, "
              f"{combination.rmw or 'the distro default RMW'}, {python})", flush=True)
        started = time.monotonic()
        clean_fastdds_shm(combination)  # a killed run before this one may have left some: they slow discovery
        code, output = run(command, env)
        elapsed = time.monotonic() - started
        clean_fastdds_shm(combination)
        status = "passed" if code == 0 else f"FAILED (exit {code})"
        failed = failed or code != 0
        table.append((combination.name, status, counts(output), elapsed))

    print("\n== real-ROS suite, per combination:")
    totals: dict[str, int] = {}
    for name, status, outcome, elapsed in table:
        figures = ", ".join(f"{number} {kind}" for kind, number in sorted(outcome.items()))
        took = f" in {elapsed:.0f} s" if elapsed else ""
        print(f"  {name:<16} {status}{': ' + figures if figures else ''}{took}")
        for kind, number in outcome.items():
            totals[kind] = totals.get(kind, 0) + number
    print(f"ros-matrix: {totals.get('passed', 0)} passed, {totals.get('failed', 0) + totals.get('error', 0)} failed, "
          f"{totals.get('skipped', 0)} skipped")
    return 1 if failed else 0


def clean_fastdds_shm(combination: Combination) -> None:
    """Fast DDS leaves /dev/shm files of processes that were killed (a test's last resort, an interrupted run), and
    stale ones slowed discovery in a later Fast DDS session: `fastdds shm clean` removes those no live process holds
    (others' runs keep theirs). Run before and after each session."""
    tool = combination.tree / "bin" / "fastdds"
    if not tool.is_file():
        return
    # bin/fastdds is a shell script that runs the first python3 on PATH: the combination's venv's.
    env = dict(os.environ, PATH=f"{combination.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(["sh", str(tool), "shm", "clean"], capture_output=True, text=True, timeout=60, check=False,
                          env=env)
    summary = " ".join(line.strip() for line in done.stdout.splitlines() if "cleaned" in line)
    print(f"   fastdds shm clean: {summary or (done.stdout + done.stderr).strip()[-200:]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
