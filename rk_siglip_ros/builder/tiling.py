"""Nano-tiled attention: split the queries into tiles of T tokens and attend each tile to all keys separately.

Softmax is per query row, so tiling the queries is exact. Small tiles keep each matmul/softmax inside the NPU's
on-chip buffers (the seed recipe); a last, shorter tile takes any remainder.
"""

from __future__ import annotations

import torch

from rk_siglip_ros.builder.barrier import poison_pill


def check_tile(tile: int | None, num_tokens: int) -> None:
    """Refuse tile sizes that cannot tile ``num_tokens`` queries (None or 0 mean no tiling)."""
    if tile is None or tile == 0:
        return
    if tile < 0 or tile > num_tokens:
        raise ValueError(f"--tile {tile} does not fit a sequence of {num_tokens} tokens; use 1..{num_tokens} "
                         "(e.g. 32), or 0 for no tiling")


def tile_bounds(num_tokens: int, tile: int | None) -> list[tuple[int, int]]:
    """[start, stop) query ranges; one range when tiling is off."""
    if not tile:
        return [(0, num_tokens)]
    return [(start, min(start + tile, num_tokens)) for start in range(0, num_tokens, tile)]


def attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float,
              tile: int | None = None, poison: bool = False) -> torch.Tensor:
    """Eager attention over [batch, heads, tokens, head_dim] tensors, optionally query-tiled and poisoned.

    Returns [batch, heads, tokens, head_dim]. With ``poison`` each tile's output gets the barrier term computed from
    that tile's queries, so tiles stay separate ops after compilation.
    """
    keys_t = keys.transpose(-1, -2)
    outputs = []
    for start, stop in tile_bounds(queries.shape[-2], tile):
        query_tile = queries[..., start:stop, :]
        weights = torch.softmax(torch.matmul(query_tile, keys_t) * scaling, dim=-1)
        out = torch.matmul(weights, values)
        outputs.append(poison_pill(out, query_tile) if poison else out)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)
