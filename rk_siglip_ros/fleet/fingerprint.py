"""A bag's content fingerprint: the same bag copied elsewhere keeps it, a re-recorded or altered one does not.

Reading every byte of hundreds of multi-GB bags on each run, only to learn they are indexed already, would cost more
than the check is worth; the fingerprint hashes what changes when a bag does: each file's name and size, its first
and last MiB (MCAP ends with a summary of chunk offsets and CRCs, sqlite3 starts with its page header) and the whole
metadata.yaml (message counts, time range).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLE_BYTES = 1 << 20


def bag_files(path: Path) -> list[Path]:
    """The files a bag is made of: itself (a bare .mcap/.db3), or the files directly in its folder, sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file())


def fingerprint(path: str | Path) -> str:
    """sha256 (hex) of the bag's files' names, sizes and sampled bytes; OSError when a file cannot be read."""
    digest = hashlib.sha256()
    for file in bag_files(Path(path)):
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with open(file, "rb") as stream:
            if file.name == "metadata.yaml" or size <= 2 * SAMPLE_BYTES:
                digest.update(stream.read())
                continue
            digest.update(stream.read(SAMPLE_BYTES))
            stream.seek(size - SAMPLE_BYTES)
            digest.update(stream.read(SAMPLE_BYTES))
    return digest.hexdigest()
