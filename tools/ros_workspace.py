"""What everything here that runs the real ROS 2 shares (the real-ROS tests, `make ros-demo`, the ROS benchmark):
a ROS_DOMAIN_ID no other run on this machine holds, and this repository built with colcon into a workspace.

Development tooling, not part of the installed package."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "rk_siglip_ros"
# ROS_DOMAIN_ID 1..101: 0 is everyone's default; above 101 Cyclone's ports collide with Linux's ephemeral range.
DOMAIN_IDS = range(1, 102)
LOCK_DIR = Path(tempfile.gettempdir())


def claim_domain_id() -> tuple[int, TextIO]:
    """A ROS_DOMAIN_ID no other run on this machine holds: start from this PID, take the first free one.

    The claim is an flock on the returned file, held while it stays open (keep it for the life of the run), so
    parallel runs (other worktrees, CI jobs, a demo beside the tests) never share a domain, and a crashed run frees
    its id."""
    first = os.getpid() % len(DOMAIN_IDS)
    for offset in range(len(DOMAIN_IDS)):
        domain = DOMAIN_IDS[(first + offset) % len(DOMAIN_IDS)]
        handle = open(LOCK_DIR / f"rk_siglip_ros-domain-{domain}.lock", "w")  # noqa: SIM115 -- held on purpose
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return domain, handle
    raise RuntimeError(f"every ROS_DOMAIN_ID in {DOMAIN_IDS} is held by another run")


def localhost_only(distro: str | None = None) -> dict[str, str]:
    """The environment that keeps DDS on the loopback: ROS_LOCALHOST_ONLY=1 up to Humble; from Jazzy on its
    replacement ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (ROS_LOCALHOST_ONLY still works there, but makes every
    process log two deprecation warnings, which a robot on Jazzy does not see)."""
    distro = distro if distro is not None else os.environ.get("ROS_DISTRO", "")
    if distro in ("foxy", "galactic", "humble", "iron"):
        return {"ROS_LOCALHOST_ONLY": "1"}
    return {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def keep_dds_on_loopback(environ: dict[str, str] | os._Environ) -> None:
    """Set :func:`localhost_only` in ``environ``, dropping the other distro's variable."""
    wanted = localhost_only()
    for key in ("ROS_LOCALHOST_ONLY", "ROS_AUTOMATIC_DISCOVERY_RANGE"):
        if key not in wanted:
            environ.pop(key, None)
    environ.update(wanted)


def source_files() -> list[str]:
    """The files a clone has (tracked plus new, not ignored), so the build sees the working tree."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if line and (REPO / line).is_file()]


def colcon_install(workspace: Path) -> dict[str, str]:
    """`colcon build` this package in ``workspace`` as a robot would; returns the environment with its
    install/local_setup.bash sourced on top of the current ROS. RuntimeError with colcon's output when it fails."""
    source = workspace / "src" / PACKAGE
    shutil.rmtree(source, ignore_errors=True)  # a reused workspace (make ros-demo's) keeps no deleted file
    for relative in source_files():
        if relative.startswith("shards/"):
            continue  # a developer's built shard sets: the callers bring their own
        target = source / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    colcon = shutil.which("colcon") or str(Path(sys.executable).with_name("colcon"))
    result = subprocess.run([colcon, "build", "--event-handlers", "console_direct-"], cwd=workspace,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"colcon build failed in {workspace}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    dump = subprocess.run(["bash", "-c", f". {workspace}/install/local_setup.bash && env -0"],
                          capture_output=True, check=True).stdout.decode()
    return dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)
