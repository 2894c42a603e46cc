"""Writing the output bag safely: refuse to clobber what is not ours, stage it in a hidden folder beside OUT and move
it into place only when it is complete."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin

from .errors import BagError

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


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
def staged_output(out_path: Path) -> Iterator[Path]:
    """Yield a path to write the bag to; move it to ``out_path`` when the block succeeds, delete it otherwise."""
    stage = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.partial-", dir=out_path.parent))
    try:
        # The writer names its storage file after the folder, so stage under the final name.
        yield stage / out_path.name
        _replace(stage / out_path.name, out_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
