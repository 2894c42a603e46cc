"""A shard set run on rknn-toolkit2's x86 simulator, recompiled from its ONNX files independently of the build."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rk_siglip_ros.builder.verify import run_chain
from rk_siglip_ros.manifest import Manifest


def simulator_chain(manifest: Manifest, workdir: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Compile every shard (fp16) into ``workdir`` and run the whole chain on ``pixels``; the contexts are released."""
    from rk_siglip_ros.builder.rknn_compile import compile_shard

    compiled = {}
    try:
        for shard in manifest.shards:
            compiled[shard.name] = compile_shard(manifest.path(shard, "onnx"), workdir / f"check-{shard.name}.rknn",
                                                 manifest.target, "fp16", None, [], shard)
        return run_chain(manifest, lambda shard, feeds: compiled[shard.name].run(feeds), pixels)
    finally:
        for shard in compiled.values():
            shard.release()
