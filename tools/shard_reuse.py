"""A shard set reused when a valid build is already in its folder, else built: what the demo and the benchmarks
share, so a second run skips minutes of building."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rk_siglip_ros.manifest import Manifest, ManifestError, load_manifest


def reuse_or_build(model: str, out: Path, accept: Callable[[Manifest], bool], *, formats: tuple[str, ...] = ("onnx",),
                   rebuild: bool = False, progress: bool = False, **options: Any) -> tuple[Manifest, bool]:
    """(manifest, built now). ``out`` is reused when it holds a build of ``model`` with files of every kind in
    ``formats``, all matching their sha256 (the manifest records that, so encoders opened from it do not hash them
    again), and ``accept(manifest)`` holds; otherwise ``build_shards(model, out, formats=formats, **options)``
    replaces it. The builder (torch, transformers) is imported only to build."""
    if not rebuild:
        try:
            manifest = load_manifest(out, verify=formats)
            if (manifest.model.source == model and all(manifest.has_files(kind) for kind in formats)
                    and accept(manifest)):
                return manifest, False
        except ManifestError:
            pass
    from rk_siglip_ros.builder.build import build_shards

    return build_shards(model, out, formats=formats, force=True, progress=progress, **options), True
