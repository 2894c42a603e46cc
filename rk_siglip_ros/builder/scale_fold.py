"""Exact host-side scale folding: make the NPU carry ``s * x`` in the residual stream instead of ``x``.

LayerNorm is scale invariant up to its eps: LN(s*x; eps*s^2) == LN(x; eps). So scaling every write into the residual
stream (the embedding output, attention out_proj, MLP fc2) by s and every LayerNorm that reads the stream by eps*s^2
leaves all LayerNorm outputs, and hence the post-LayerNorm tokens and the pooled head output, unchanged, while the
stream itself (whose outlier channels can overflow fp16 sums of squares) shrinks by s. The host undoes s where the
stream leaves the NPU (the manifest records it).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from rk_siglip_ros.builder.models import VisionTower


def check_scale(scale: float) -> None:
    if not math.isfinite(scale) or scale <= 0.0:
        raise ValueError(f"--scale {scale}: the host scale must be a finite positive number (e.g. 0.1, or 1 for off)")


def fold_host_scale(tower: VisionTower, scale: float) -> VisionTower:
    """A deep copy of ``tower`` whose residual stream is ``scale`` times the original's; the original is untouched."""
    check_scale(scale)
    folded = copy.deepcopy(tower)
    if scale == 1.0:
        return folded
    with torch.no_grad():
        embeddings = folded.embeddings
        _scale_linear(embeddings.patch_embedding, scale)
        embeddings.position_embedding.weight.mul_(scale)  # added to the patch embedding inside the embeddings
        for layer in folded.layers:
            _scale_linear(layer.self_attn.out_proj, scale)
            _scale_linear(layer.mlp.fc2, scale)
            _scale_eps(layer.layer_norm1, scale)
            _scale_eps(layer.layer_norm2, scale)
        _scale_eps(folded.post_layernorm, scale)
    return folded


def _scale_linear(module: nn.Module, scale: float) -> None:
    module.weight.mul_(scale)
    if module.bias is not None:
        module.bias.mul_(scale)


def _scale_eps(norm: nn.LayerNorm, scale: float) -> None:
    norm.eps = norm.eps * scale * scale
