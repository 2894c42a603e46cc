"""torch modules for one shard: a contiguous run of encoder blocks, rewritten for export.

Each block reuses the (possibly scale-folded) tower's own parameters and computes what the transformers forward
computes, written out so that tiling and the fusion barrier can be applied and the exported graph has static shapes
and only the inputs the NPU needs (no attention masks, no position-id arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rk_siglip_ros.builder.models import VisionTower
from rk_siglip_ros.builder.shard_plan import ATTENTION, EMBEDDING, FINAL, MLP, Block
from rk_siglip_ros.builder.tiling import attention
from rk_siglip_ros.manifest import ShardSpec


class EmbeddingBlock(nn.Module):
    """pixel_values [1,3,H,W] -> patch embedding + position embedding [1,N,C]."""

    def __init__(self, tower: VisionTower) -> None:
        super().__init__()
        self.patch_embedding = tower.embeddings.patch_embedding
        self.register_buffer("positions", _position_table(tower), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values)
        return patches.flatten(2).transpose(1, 2) + self.positions


@torch.no_grad()
def _position_table(tower: VisionTower) -> torch.Tensor:
    """The position embeddings the tower adds for a full square image, as a constant [1, N, C].

    Taken from the tower's own forward (a hook on its position embedding), so SmolVLM's bucketed position ids for an
    all-ones patch mask come out exactly as transformers computes them.
    """
    captured: list[torch.Tensor] = []
    handle = tower.embeddings.position_embedding.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        # on the tower's device: a shape-only tower (meta device, for planning) has no real tensors
        device = tower.embeddings.patch_embedding.weight.device
        pixels = torch.zeros(1, 3, tower.image_size, tower.image_size, device=device)
        if tower.architecture == "smolvlm":
            side = tower.image_size // tower.patch_size
            mask = torch.ones(1, side, side, dtype=torch.bool, device=pixels.device)
            tower.embeddings(pixels, patch_attention_mask=mask)
        else:
            tower.embeddings(pixels)
    finally:
        handle.remove()
    return captured[0].detach().clone().reshape(1, tower.num_tokens, tower.hidden_size)


class AttentionBlock(nn.Module):
    """x + out_proj(attention(layer_norm1(x))), optionally query-tiled and poisoned."""

    def __init__(self, layer: nn.Module, tile: int | None, poison: bool) -> None:
        super().__init__()
        self.norm = layer.layer_norm1
        attn = layer.self_attn
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
        self.heads = int(attn.num_heads)
        self.scaling = float(attn.scale)
        self.tile = tile
        self.poison = poison

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = hidden.shape
        normed = self.norm(hidden)
        split = (batch, tokens, self.heads, width // self.heads)
        queries = self.q_proj(normed).view(split).transpose(1, 2)
        keys = self.k_proj(normed).view(split).transpose(1, 2)
        values = self.v_proj(normed).view(split).transpose(1, 2)
        out = attention(queries, keys, values, self.scaling, self.tile, self.poison)
        return hidden + self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class MLPBlock(nn.Module):
    """x + fc2(act(fc1(layer_norm2(x))))."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.norm = layer.layer_norm2
        self.mlp = layer.mlp

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.mlp(self.norm(hidden))


class FinalBlock(nn.Module):
    """post LayerNorm -> tokens, and (SigLIP) the attention-pooling head -> pooled."""

    def __init__(self, tower: VisionTower) -> None:
        super().__init__()
        self.norm = tower.post_layernorm
        self.head = PoolingHead(tower.head) if tower.head is not None else None

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = self.norm(hidden)
        return (tokens,) if self.head is None else (tokens, self.head(tokens))


class PoolingHead(nn.Module):
    """SiglipMultiheadAttentionPoolingHead written out: one learned probe attends to all tokens, then LN + MLP."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.probe = head.probe
        mha: nn.MultiheadAttention = head.attention
        self.in_weight, self.in_bias = mha.in_proj_weight, mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.heads = int(mha.num_heads)
        self.norm = head.layernorm
        self.mlp = head.mlp

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, width = tokens.shape
        head_dim = width // self.heads
        w_q, w_k, w_v = self.in_weight.chunk(3)
        b_q, b_k, b_v = self.in_bias.chunk(3)
        probe = self.probe.expand(batch, 1, width)
        queries = nn.functional.linear(probe, w_q, b_q).view(batch, 1, self.heads, head_dim).transpose(1, 2)
        keys = nn.functional.linear(tokens, w_k, b_k).view(batch, count, self.heads, head_dim).transpose(1, 2)
        values = nn.functional.linear(tokens, w_v, b_v).view(batch, count, self.heads, head_dim).transpose(1, 2)
        # The probe query is a constant, so scores are computed as keys @ probe^T and the weighted sum as a reduction:
        # rknn-toolkit2 2.5.0's SDPA fusion rule crashes on a matmul-softmax-matmul whose query is a folded constant.
        scores = torch.matmul(keys, queries.transpose(-1, -2)) * head_dim**-0.5  # [B, H, N, 1]
        weights = torch.softmax(scores, dim=-2)
        pooled = (weights * values).sum(dim=-2, keepdim=True)  # [B, H, 1, D]
        pooled = self.out_proj(pooled.transpose(1, 2).reshape(batch, 1, width))
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]


class ShardModule(nn.Module):
    """A contiguous run of blocks: the first takes pixel_values or the residual stream, the last returns the residual
    stream or (tokens[, pooled])."""

    def __init__(self, tower: VisionTower, blocks: list[Block], tile: int | None = None, poison: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(make_block(tower, block, tile, poison) for block in blocks)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = inputs
        for block in self.blocks:
            out = block(out)
        return out


def make_block(tower: VisionTower, block: Block, tile: int | None, poison: bool) -> nn.Module:
    if block.kind == EMBEDDING:
        return EmbeddingBlock(tower)
    if block.kind == ATTENTION:
        return AttentionBlock(tower.layers[block.layer], tile, poison)
    if block.kind == MLP:
        return MLPBlock(tower.layers[block.layer])
    if block.kind == FINAL:
        return FinalBlock(tower)
    raise ValueError(f"unknown block kind {block.kind!r}")


@dataclass
class PlannedShard:
    """One shard before it is built: its blocks, its tensor interface, and its module."""

    spec: ShardSpec
    blocks: list[Block]
    module: nn.Module  # a ShardModule, or a split profile's LayerPart / FinalBlock
    reference_module: nn.Module  # unfolded, untiled: produces the fp32 reference at this shard's boundary
    stats: dict[str, float | int | None] = field(default_factory=dict)
