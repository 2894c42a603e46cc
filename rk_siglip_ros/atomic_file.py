"""Files written whole or not at all: a temp file beside the target, renamed into place only once complete, so an
interrupted tool never leaves a truncated .npy or .png that looks finished."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Write = Callable[[BinaryIO], object]  # fills the stream, e.g. lambda stream: np.save(stream, array)


def write_staged(path: Path, write: Write) -> Path:
    """A temp file beside ``path`` (hidden, same folder: the rename stays on one file system) filled by ``write``;
    the caller renames it into place or deletes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def write_atomically(path: Path, write: Write) -> None:
    """Write ``path`` with ``write(stream)``, whole or not at all."""
    temporary = write_staged(path, write)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
