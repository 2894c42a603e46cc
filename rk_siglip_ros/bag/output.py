"""Writing the output bag safely: refuse to clobber what is not ours, stage it in a hidden folder beside OUT and move
it into place only when it is complete."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin

from rk_siglip_ros.bag.errors import BagError

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
OWNER_FILE = "owner"  # in each staging folder: "<pid> <hostname>" of the process writing it
# A staging folder without a readable owner (written before owner files, or by another host on a shared disk) is
# only removed once nothing can still be writing it.
UNOWNED_STALE_AFTER_S = 24 * 3600


def check_output(in_path: str | Path, out_path: str | Path, force: bool) -> None:
    """Refuse an OUT that exists (unless ``force`` and it is a bag or a file) or that is the input itself."""
    source, target = Path(in_path).resolve(), Path(out_path).resolve()
    if target == source or source in target.parents:
        raise BagError(f"{out_path}: the output must not be the input bag or lie inside it")
    if not target.parent.is_dir():
        raise BagError(f"{target.parent}: the folder for the output does not exist")
    if target.exists() or target.is_symlink():
        if not force:
            raise BagError(f"{out_path} exists; pass --force to overwrite")
        if target.is_dir() and any(target.iterdir()) and not (target / "metadata.yaml").is_file():
            raise BagError(f"{out_path} is a folder that is not a rosbag2; refusing to overwrite it even with --force")


@contextmanager
def staged_output(out_path: Path, removed: list[Path] | None = None) -> Iterator[Path]:
    """Yield a path to write the bag to; move it to ``out_path`` when the block succeeds, delete it otherwise.

    Staging folders of earlier runs that were killed (SIGKILL, power loss: no ``finally`` ran) are removed first,
    when their owner process is gone (see :func:`remove_stale_stages`); ``removed`` collects their paths.
    """
    cleaned = remove_stale_stages(out_path)
    if removed is not None:
        removed.extend(cleaned)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.partial-", dir=out_path.parent))
    (stage / OWNER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    try:
        # The writer names its storage file after the folder, so stage under the final name.
        yield stage / out_path.name
        _replace(stage / out_path.name, out_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_stages(out_path: Path) -> list[Path]:
    """Delete ``.OUT.partial-*`` folders beside ``out_path`` that no live process owns: their owner (same host) has
    exited, or they have no readable owner and are older than :data:`UNOWNED_STALE_AFTER_S`. Returns them."""
    removed = []
    for stage in sorted(out_path.parent.glob(f".{glob.escape(out_path.name)}.partial-*")):
        if stage.is_dir() and not stage.is_symlink() and _is_stale(stage):
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    return removed


def _is_stale(stage: Path) -> bool:
    try:
        pid_text, host = (stage / OWNER_FILE).read_text().split(maxsplit=1)
        pid = int(pid_text)
    except (OSError, ValueError):
        pid, host = None, ""
    if pid is None or host.strip() != socket.gethostname():
        try:
            return time.time() - stage.stat().st_mtime > UNOWNED_STALE_AFTER_S
        except OSError:
            return False
    return not _process_alive(pid)


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    except OverflowError:  # not a pid this system can have
        return False
    return True


def _replace(new: Path, target: Path) -> None:
    if not (target.exists() or target.is_symlink()):
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{time.monotonic_ns()}")
    target.rename(old)  # keep the previous bag until the new one is in place
    new.rename(target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
