"""The builder's graph transforms, each on its own: scale folding, tiling, barrier, partition, shard modules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rk_siglip_ros.builder.barrier import POISON_WEIGHT, disabled_rules, poison_pill, uses_poison
from rk_siglip_ros.builder.models import load_vision_tower
from rk_siglip_ros.builder.scale_fold import fold_host_scale
from rk_siglip_ros.builder.shard_modules import EmbeddingBlock, ShardModule
from rk_siglip_ros.builder.shard_plan import (
    ATTENTION,
    EMBEDDING,
    FINAL,
    MLP,
    balanced_cut,
    encoder_blocks,
    plan_shards,
)
from rk_siglip_ros.builder.tiling import attention, check_tile, tile_bounds
from rk_siglip_ros.builder.verify import cosine

MODELS = ("random:tiny", "random:tiny-smolvlm")


@pytest.fixture(scope="module", params=MODELS)
def tower(request):
    return load_vision_tower(request.param)


def _pixels(tower, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, tower.image_size, tower.image_size, generator=generator) * 0.6


# ------------------------------------------------------------------------------------------------ scale folding


@pytest.mark.parametrize("scale", [0.1, 0.01, 3.0])
def test_scale_folding_alone_matches_fp32(tower, scale):
    pixels = _pixels(tower)
    pooled, tokens = tower.reference(pixels)
    folded_pooled, folded_tokens = fold_host_scale(tower, scale).reference(pixels)  # transformers' own forward
    assert (folded_tokens - tokens).abs().max() <= 1e-4 * tokens.abs().max()
    assert (folded_pooled - pooled).abs().max() <= 1e-4 * pooled.abs().max()


def test_scale_folding_scales_the_residual_stream(tower):
    pixels = _pixels(tower)
    folded = fold_host_scale(tower, 0.1)
    blocks = encoder_blocks(tower)[:3]  # embedding, attention0, mlp0: the stream after layer 0
    with torch.no_grad():
        original = ShardModule(tower, blocks)(pixels)
        scaled = ShardModule(folded, blocks)(pixels)
    torch.testing.assert_close(scaled, original * 0.1, rtol=1e-4, atol=1e-5 * original.abs().max().item())
    assert folded.post_layernorm.eps == pytest.approx(tower.post_layernorm.eps * 0.01)
    assert folded.layers[0].layer_norm1.eps == pytest.approx(tower.layers[0].layer_norm1.eps * 0.01)


def test_scale_folding_leaves_the_source_untouched(tower):
    before = tower.layers[0].mlp.fc2.weight.clone()
    fold_host_scale(tower, 0.1)
    assert torch.equal(tower.layers[0].mlp.fc2.weight, before)
    with pytest.raises(ValueError, match="--scale"):
        fold_host_scale(tower, 0.0)


def test_embedding_block_matches_the_tower_embeddings(tower):
    pixels = _pixels(tower)
    with torch.no_grad():
        ours = EmbeddingBlock(tower)(pixels)
        if tower.architecture == "smolvlm":
            side = tower.image_size // tower.patch_size
            theirs = tower.embeddings(pixels, patch_attention_mask=torch.ones(1, side, side, dtype=torch.bool))
        else:
            theirs = tower.embeddings(pixels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ tiling


@pytest.mark.parametrize("tile", [1, 7, 16, 24, 32, 64])
@pytest.mark.parametrize("poison", [False, True])
def test_tiled_attention_equals_untiled(tile, poison):
    generator = torch.Generator().manual_seed(0)
    queries, keys, values = (torch.randn(1, 4, 64, 16, generator=generator) for _ in range(3))
    expected = torch.softmax(queries @ keys.transpose(-1, -2) * 0.25, dim=-1) @ values
    tiled = attention(queries, keys, values, 0.25, tile=tile, poison=poison)
    assert tiled.shape == expected.shape
    assert (tiled - expected).abs().max() <= (POISON_WEIGHT if poison else 0) + 1e-6


def test_tile_bounds_cover_the_sequence_once():
    for tokens, tile in itertools.product([1, 64, 100, 1024], [None, 1, 7, 32, 100]):
        if tile and tile > tokens:
            continue
        bounds = tile_bounds(tokens, tile)
        covered = [index for start, stop in bounds for index in range(start, stop)]
        assert covered == list(range(tokens))
        assert all(stop - start <= (tile or tokens) for start, stop in bounds)


@pytest.mark.parametrize("tile", [-1, 65, 1000])
def test_tiles_that_do_not_fit_are_refused(tile):
    with pytest.raises(ValueError, match="--tile"):
        check_tile(tile, 64)
    check_tile(0, 64)
    check_tile(None, 64)


# ----------------------------------------------------------------------------------------------------- barrier


def test_poison_pill_is_tiny_and_depends_on_the_input():
    out = torch.zeros(1, 4, 8, 16)
    first = poison_pill(out, torch.full((1, 4, 8, 16), -3.0))
    second = poison_pill(out, torch.full((1, 4, 8, 16), 3.0))
    assert 0 < first.abs().max() <= POISON_WEIGHT
    assert not torch.equal(first, second)


def test_barrier_choices():
    assert disabled_rules("none") == [] and not uses_poison("none")
    assert disabled_rules("poison") == [] and uses_poison("poison")
    assert "fuse_matmul_softmax_matmul_to_sdpa" in disabled_rules("disable-rules")
    assert uses_poison("both") and disabled_rules("both") == disabled_rules("disable-rules")


# --------------------------------------------------------------------------------------------------- partition


def _brute_force_best(macs: list[int], parts: int) -> int:
    best = None
    for cuts in itertools.combinations(range(1, len(macs)), parts - 1):
        bounds = (0, *cuts, len(macs))
        worst = max(sum(macs[a:b]) for a, b in itertools.pairwise(bounds))
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_balanced_cut_is_optimal_and_contiguous(seed):
    rng = np.random.default_rng(seed)
    macs = [int(v) for v in rng.integers(1, 100, size=9)]
    for parts in (1, 2, 3, 5, 9):
        groups = balanced_cut(macs, parts)
        assert len(groups) == parts and all(groups)
        assert [index for group in groups for index in group] == list(range(len(macs)))
        assert max(sum(macs[i] for i in group) for group in groups) == _brute_force_best(macs, parts)
    with pytest.raises(ValueError, match="--shards"):
        balanced_cut(macs, 10)


def test_seed_profile_of_a_12_layer_model_has_26_shards():
    tower = load_vision_tower("random:tiny-12")
    shards = plan_shards(encoder_blocks(tower), "seed")
    assert len(shards) == 26
    kinds = [group[0].kind for group in shards]
    assert kinds == [EMBEDDING] + [ATTENTION, MLP] * 12 + [FINAL]
    assert all(len(group) == 1 for group in shards)


def test_pipeline3_is_balanced_within_15_percent():
    tower = load_vision_tower("random:tiny-12")
    shards = plan_shards(encoder_blocks(tower), "pipeline3")
    macs = [sum(block.macs for block in group) for group in shards]
    assert len(macs) == 3
    assert max(macs) <= 1.15 * min(macs)
    assert plan_shards(encoder_blocks(tower), "whole")[0] == encoder_blocks(tower)


def test_macs_match_a_hand_count():
    tower = load_vision_tower("random:tiny")
    blocks = encoder_blocks(tower)
    tokens, width, mlp = 64, 64, 128
    assert blocks[0].macs == tokens * 3 * 8 * 8 * width
    assert blocks[1].macs == 4 * tokens * width * width + 2 * tokens * tokens * width
    assert blocks[2].macs == 2 * tokens * width * mlp


# ----------------------------------------------------------------------------------------------- shard modules


@pytest.mark.parametrize("tile", [None, 24])
def test_shard_chain_in_torch_matches_transformers(tower, tile):
    pixels = _pixels(tower)
    pooled, tokens = tower.reference(pixels)
    folded = fold_host_scale(tower, 0.1)
    shards = plan_shards(encoder_blocks(folded), "seed")
    value = pixels
    with torch.no_grad():
        for index, group in enumerate(shards):
            if index:
                value = value * 0.1  # the host re-applies the scale the previous shard's output had removed
            value = ShardModule(folded, group, tile, poison=True)(value)
            if index < len(shards) - 1:
                value = value / 0.1
    assert cosine(value[0].numpy(), tokens.numpy()) >= 0.99999
    if tower.head is not None:
        assert cosine(value[1].numpy(), pooled.numpy()) >= 0.99999
