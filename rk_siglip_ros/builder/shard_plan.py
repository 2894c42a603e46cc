"""Cut the encoder into shards: a chain of blocks (embedding, attention half, MLP half per layer, norm + head),
grouped contiguously per profile. MACs are counted analytically from the config (what the NPU has to multiply)."""

from __future__ import annotations

from dataclasses import dataclass

from rk_siglip_ros.builder.models import VisionTower
from rk_siglip_ros.runtime.partitioning import min_max_partition

# split: sequence-parallel layers, planned by split_layers.py (not a grouping of whole blocks)
PROFILES = ("seed", "pipeline3", "whole", "split")
PROFILE_SHARDS = {"pipeline3": 3, "whole": 1}

EMBEDDING, ATTENTION, MLP, FINAL = "embedding", "attention", "mlp", "final"


@dataclass(frozen=True)
class Block:
    """One indivisible step of the encoder. ``layer`` is the encoder layer index (None for embedding / final)."""

    kind: str
    layer: int | None
    macs: int

    @property
    def label(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}{self.layer}"


def encoder_blocks(tower: VisionTower) -> list[Block]:
    """The encoder as a chain of blocks, each with its multiply-accumulate count for one image."""
    tokens, width = tower.num_tokens, tower.hidden_size
    mlp_width = int(tower.config.intermediate_size)
    patch_inputs = int(getattr(tower.config, "num_channels", 3)) * tower.patch_size**2
    blocks = [Block(EMBEDDING, None, tokens * patch_inputs * width)]
    # attention half: q, k, v, out projections + scores (q k^T) + weighted sum (p v)
    attention_macs = 4 * tokens * width * width + 2 * tokens * tokens * width
    mlp_macs = 2 * tokens * width * mlp_width
    for index in range(len(tower.layers)):
        blocks.append(Block(ATTENTION, index, attention_macs))
        blocks.append(Block(MLP, index, mlp_macs))
    final_macs = tokens * width  # post LayerNorm (a multiply per element)
    if tower.head is not None:
        # probe attention: k, v over all tokens, q and out for one probe, one-query scores, then the head MLP
        final_macs += 2 * tokens * width * width + 2 * width * width + 2 * tokens * width + 2 * width * mlp_width
    blocks.append(Block(FINAL, None, final_macs))
    return blocks


def balanced_cut(macs: list[int], parts: int) -> list[list[int]]:
    """Split block indices into ``parts`` contiguous non-empty groups minimising the largest group's MACs."""
    count = len(macs)
    if not 1 <= parts <= count:
        raise ValueError(f"--shards {parts}: this model has {count} blocks (embedding, 2 per layer, norm + head); "
                         f"choose 1..{count}")
    return min_max_partition(macs, parts)


def seed_cut(blocks: list[Block]) -> list[list[int]]:
    """The seed article's cut: every block alone (embedding, each attention half, each MLP half, norm + head)."""
    return [[index] for index in range(len(blocks))]


def plan_shards(blocks: list[Block], profile: str, shards: int | None = None) -> list[list[Block]]:
    """Group blocks into shards for ``profile``; ``shards`` overrides the profile's shard count."""
    if profile not in PROFILES or profile == "split":
        raise ValueError(f"--profile {profile!r}: choose one of {', '.join(p for p in PROFILES if p != 'split')}")
    if shards is None and profile == "seed":
        groups = seed_cut(blocks)
    else:
        groups = balanced_cut([block.macs for block in blocks], shards or PROFILE_SHARDS.get(profile, 1))
    return [[blocks[index] for index in group] for group in groups]
