"""SigLIP-B/16 @ 512's shard chains as the builder records them (MACs and block labels), without any files.

The sim backend costs a shard from its manifest alone, so full-size timing tests need no build: these manifests
carry the builder's MAC counts (rk_siglip_ros/builder/partition.py) for a cut given as groups of block labels.
"""

from __future__ import annotations

from pathlib import Path

from rk_siglip_ros.manifest import Manifest, ModelInfo, PreprocessSpec, ShardSpec, TensorSpec, save_manifest
from rk_siglip_ros.runtime.partitioning import min_max_partition

T, C, MLP = 1024, 768, 3072
ATTENTION_MACS = 4 * T * C * C + 2 * T * T * C
MLP_MACS = 2 * T * C * MLP
EMBED_MACS = T * 3 * 16 * 16 * C
HEAD_MACS = T * C + 2 * T * C * C + 2 * C * C + 2 * T * C + 2 * C * MLP


def all_blocks(head: bool, layers: int = 12) -> list[str]:
    return ["embedding", *[f"{kind}{i}" for i in range(layers) for kind in ("attention", "mlp")],
            *(["final"] if head else [])]


def block_macs(label: str) -> int:
    if label.startswith("attention"):
        return ATTENTION_MACS
    if label.startswith("mlp"):
        return MLP_MACS
    return {"embedding": EMBED_MACS, "final": HEAD_MACS}[label]


def siglip_b16_manifest(profile: str, groups: list[list[str]], tile: int | None = None) -> Manifest:
    """The shard chain of ``groups`` (block labels per shard) with the builder's MACs and the right shapes."""
    stream = (1, T, C)
    shards = []
    for index, group in enumerate(groups):
        inputs = [TensorSpec("pixel_values", (1, 3, 512, 512))] if index == 0 else [shards[-1].outputs[0]]
        shards.append(ShardSpec(f"s{index}", inputs, [TensorSpec(f"h{index}", stream)], onnx=f"s{index}.onnx",
                                macs=sum(block_macs(label) for label in group), blocks=list(group)))
    return Manifest(ModelInfo("random:siglip-base-patch16-512", "siglip", 512, 16, C, T, C),
                    PreprocessSpec(size=(512, 512)), shards, {"pooled": None, "tokens": f"h{len(groups) - 1}"},
                    profile=profile, build={"tile": tile})


def cut(kind: str, layers: int = 12, head: bool = True) -> list[list[str]]:
    """Block groups of the builder's cuts: "whole", "pipeline3" (3 MAC-balanced shards), "seed" (a block each)."""
    blocks = all_blocks(head, layers)
    if kind == "seed":
        return [[label] for label in blocks]
    parts = {"whole": 1, "pipeline3": 3}[kind]
    groups = min_max_partition([block_macs(label) for label in blocks], parts)
    return [[blocks[i] for i in group] for group in groups]


def write_shard_set(folder: Path, kind: str, layers: int = 12, tile: int | None = None) -> Path:
    """A manifest-only shard set on disk (no shard files: for the sim backend only)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_manifest(siglip_b16_manifest(kind, cut(kind, layers), tile=tile), folder)
    return folder
