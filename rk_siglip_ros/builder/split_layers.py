"""The ``split`` profile: every encoder layer cut by query tokens into one part per NPU core (sequence parallelism).

A part takes the layer's whole input (T x C), computes LayerNorm, K and V for all tokens, and Q, attention, output
projection, residual, LayerNorm and MLP for its own slice of tokens only. The host concatenates the slices (one
all-gather per layer) and feeds the whole hidden state to the next layer's parts. Exact: every query still attends
to all keys, everything else is per token.

One graph per layer serves every core: it computes the first ``S`` rows (S = the largest slice) of its input, and the
host rotates the tokens so that the core's slice comes first. Attention is permutation-equivariant over its keys and
the position embeddings are added before layer 0, so a rotated input gives the same rows. The host keeps only the
slice's own rows (a core with a shorter slice gets one spare row, computed exactly and dropped). Layer 0's parts also
embed the patches (the embedding is cheap, and every part needs all tokens' K and V anyway); the pixels cannot be
rotated as tokens, so layer 0 has one graph per part, each with its slice fixed. The post-LayerNorm and the head run
in one final call. Shards: ``parts`` + (layers - 1) + 1.
"""

from __future__ import annotations

import torch
from torch import nn

from rk_siglip_ros.builder.models import VisionTower
from rk_siglip_ros.builder.shard_modules import EmbeddingBlock, FinalBlock, PlannedShard
from rk_siglip_ros.builder.shard_plan import ATTENTION, EMBEDDING, FINAL, MLP, Block, encoder_blocks
from rk_siglip_ros.builder.tiling import attention
from rk_siglip_ros.manifest import PIXEL_INPUT, PartSpec, ShardSpec, StageSpec, TensorSpec

SPLIT = "split"
DEFAULT_PARTS = 3  # one per RK3588 NPU core


def token_slices(tokens: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of each part's query tokens: contiguous, sizes differing by at most one (342/341/341)."""
    if not 1 <= parts <= tokens:
        raise ValueError(f"--shards {parts}: the split profile cuts each layer into 1..{tokens} parts (one per NPU "
                         "core, e.g. 3)")
    base, extra = divmod(tokens, parts)
    bounds, start = [], 0
    for index in range(parts):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class LayerPart(nn.Module):
    """``queries`` rows of one encoder layer's output, starting at token ``start`` of its input: LayerNorm, K and V
    over all tokens; Q, attention, out_proj, residual, LayerNorm, MLP over those rows. With ``embedding`` the input
    is pixel_values and the patch + position embedding comes first."""

    def __init__(self, tower: VisionTower, layer: int, start: int, queries: int, embedding: bool,
                 tile: int | None = None, poison: bool = False) -> None:
        super().__init__()
        block = tower.layers[layer]
        self.embedding = EmbeddingBlock(tower) if embedding else None
        self.norm1, self.norm2, self.mlp = block.layer_norm1, block.layer_norm2, block.mlp
        attn = block.self_attn
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
        self.heads = int(attn.num_heads)
        self.scaling = float(attn.scale)
        self.start, self.queries = start, queries
        self.tile, self.poison = tile, poison

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.embedding(inputs) if self.embedding is not None else inputs
        batch, tokens, width = hidden.shape
        head_dim = width // self.heads
        normed = self.norm1(hidden)
        own = slice(self.start, self.start + self.queries)
        queries = self.q_proj(normed[:, own]).view(batch, self.queries, self.heads, head_dim).transpose(1, 2)
        keys = self.k_proj(normed).view(batch, tokens, self.heads, head_dim).transpose(1, 2)
        values = self.v_proj(normed).view(batch, tokens, self.heads, head_dim).transpose(1, 2)
        out = attention(queries, keys, values, self.scaling, self.tile, self.poison)
        rows = hidden[:, own] + self.out_proj(out.transpose(1, 2).reshape(batch, self.queries, width))
        return rows + self.mlp(self.norm2(rows))


def part_macs(tower: VisionTower, queries: int, embedding: bool) -> tuple[int, int]:
    """(all MACs, attention-score MACs) of one part computing ``queries`` rows of a layer."""
    tokens, width = tower.num_tokens, tower.hidden_size
    mlp_width = int(tower.config.intermediate_size)
    scores = 2 * queries * tokens * width  # QK^T and AV for the part's queries against all keys
    dense = 2 * tokens * width * width + 2 * queries * width * width + 2 * queries * width * mlp_width  # K,V; Q,out
    if embedding:
        dense += next(block.macs for block in encoder_blocks(tower) if block.kind == EMBEDDING)
    return dense + scores, scores


def plan_split(tower: VisionTower, folded: VisionTower, parts: int, scale: float, tile: int | None,
               poison: bool) -> tuple[list[PlannedShard], list[StageSpec]]:
    """The split profile's shards (graphs, each with its module) and stages (which shard serves which rows)."""
    tokens, width = tower.num_tokens, tower.hidden_size
    bounds = token_slices(tokens, parts)
    widest = max(stop - start for start, stop in bounds)
    stream = (1, tokens, width)
    pixel = TensorSpec(PIXEL_INPUT, (1, 3, tower.image_size, tower.image_size), "float32", 1.0)
    plans: list[PlannedShard] = []
    stages: list[StageSpec] = []

    def add(name: str, layer: int, start: int, queries: int, embedding: bool, source: TensorSpec) -> None:
        macs, scores = part_macs(tower, queries, embedding)
        labels = [EMBEDDING] * embedding + [f"{ATTENTION}{layer}", f"{MLP}{layer}"]
        spec = ShardSpec(name=name, inputs=[source],
                         outputs=[TensorSpec(f"rows_{layer}", (1, queries, width), "float32", 1.0 / scale)],
                         layers=[layer], macs=macs, blocks=labels, attention_macs=scores)
        module = LayerPart(folded, layer, start, queries, embedding, tile, poison).eval()
        reference = LayerPart(tower, layer, start, queries, embedding).eval()
        plans.append(PlannedShard(spec, _blocks(tower, layer, embedding), module, reference))

    for layer in range(len(tower.layers)):
        gather = TensorSpec(f"hidden_{layer}", stream, "float32", 1.0 / scale)
        if layer == 0:  # pixels cannot be rotated as tokens: one graph per slice, its rows fixed
            for index, (start, stop) in enumerate(bounds):
                add(f"l0p{index}", 0, start, stop - start, True, pixel)
            stage_parts = [PartSpec(f"l0p{i}", start, stop) for i, (start, stop) in enumerate(bounds)]
        else:  # one graph, its first `widest` rows; the host rotates each core's slice to the front
            add(f"l{layer}", layer, 0, widest, False, TensorSpec(f"hidden_{layer - 1}", stream, "float32", scale))
            stage_parts = [PartSpec(f"l{layer}", start, stop, start) for start, stop in bounds]
        stages.append(StageSpec(f"layer{layer}", stage_parts, gather))

    last = f"hidden_{len(tower.layers) - 1}"
    outputs = [TensorSpec("tokens", stream, "float32", 1.0)]
    if tower.head is not None:
        outputs.append(TensorSpec("pooled", (1, width), "float32", 1.0))
    final = next(block for block in encoder_blocks(tower) if block.kind == FINAL)
    spec = ShardSpec(name="final", inputs=[TensorSpec(last, stream, "float32", scale)], outputs=outputs,
                     macs=final.macs, blocks=[final.label], attention_macs=0)
    plans.append(PlannedShard(spec, [final], FinalBlock(folded).eval(), FinalBlock(tower).eval()))
    stages.append(StageSpec("final", [PartSpec("final")]))
    return plans, stages


def _blocks(tower: VisionTower, layer: int, embedding: bool) -> list[Block]:
    """The whole-layer blocks a part belongs to (their MACs are the whole layer's: for reports, not timing)."""
    wanted = {(ATTENTION, layer), (MLP, layer)} | ({(EMBEDDING, None)} if embedding else set())
    return [block for block in encoder_blocks(tower) if (block.kind, block.layer) in wanted]
