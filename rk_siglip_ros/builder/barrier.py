"""Fusion barriers: keep the RKNN compiler from re-fusing nano-tiled attention into one exSDPAttention op.

Two independent mechanisms (the seed article used both):
- the "poison pill": add ``sigmoid(x[..., :1]) * 1e-6`` to an attention tile's output. It depends on the tile's own
  input, so no rewrite rule can drop it, and it breaks the matmul-softmax-matmul pattern the fuser looks for. It
  changes the output by at most 1e-6 absolute (verified like any other change: the chain must still match fp32).
- rknn-toolkit2 ``config(disable_rules=[...])`` naming the SDPA fusion rules.
"""

from __future__ import annotations

import torch

BARRIERS = ("none", "poison", "disable-rules", "both")
POISON_WEIGHT = 1e-6

# rknn-toolkit2 2.5.0's rules that fuse matmul/softmax/matmul into exSDPAttention, by the names its verbose log prints
# (checked: disabling only the first lets the second fuse the same chain one pass later; with all of them the graph
# keeps exMatMul + exSoftmax13). disable_rules must be a list; names it does not know are ignored.
SDPA_FUSION_RULES = (
    "fuse_matmul_softmax_matmul_to_sdpa",
    "fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa",
    "fuse_matmul_add_mul_softmax_matmul_to_sdpa",
    "fuse_mul_into_sdpa",
)


def check_barrier(barrier: str) -> None:
    if barrier not in BARRIERS:
        raise ValueError(f"--barrier {barrier!r}: choose one of {', '.join(BARRIERS)}")


def uses_poison(barrier: str) -> bool:
    return barrier in ("poison", "both")


def disabled_rules(barrier: str) -> list[str]:
    """The rknn ``disable_rules`` list for this barrier (empty when the compiler may fuse freely)."""
    return list(SDPA_FUSION_RULES) if barrier in ("disable-rules", "both") else []


def poison_pill(out: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``out + sigmoid(source[..., :1]) * 1e-6``: a data-dependent no-op the compiler cannot fuse through."""
    return out + torch.sigmoid(source[..., :1]) * POISON_WEIGHT
