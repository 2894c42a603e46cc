"""End-to-end builds on tiny random models: the ONNX shard chain must equal the unmodified transformers model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rk_siglip_ros.builder.models import load_vision_tower
from rk_siglip_ros.builder.verify import cosine, onnx_runner, run_chain
from rk_siglip_ros.manifest import load_manifest

MODELS = ("random:tiny", "random:tiny-smolvlm")


def _chain_vs_transformers(folder, model: str, seed: int = 7) -> tuple[float, float | None]:
    manifest = load_manifest(folder)
    tower = load_vision_tower(model)
    pixels = np.random.default_rng(seed).normal(0.0, 0.6, (1, 3, tower.image_size, tower.image_size))
    pixels = pixels.astype(np.float32)
    tensors = run_chain(manifest, onnx_runner(manifest.root), pixels)
    pooled, tokens = tower.reference(torch.from_numpy(pixels))
    tokens_cos = cosine(tensors[manifest.outputs["tokens"]], tokens.numpy())
    if manifest.outputs["pooled"] is None:
        return tokens_cos, None
    return tokens_cos, cosine(tensors[manifest.outputs["pooled"]], pooled.numpy())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("profile", ["whole", "pipeline3"])
def test_onnx_chain_equals_transformers(shard_factory, model, profile):
    folder = shard_factory(model=model, profile=profile)
    tokens_cos, pooled_cos = _chain_vs_transformers(folder, model)
    assert tokens_cos >= 0.99999
    if model == "random:tiny":
        assert pooled_cos is not None and pooled_cos >= 0.99999
    else:
        assert pooled_cos is None  # SmolVLM: host mean-pools the tokens


def test_manifest_records_what_the_host_needs(shard_factory):
    manifest = load_manifest(shard_factory(model="random:tiny", profile="pipeline3"))
    assert len(manifest.shards) == 3
    assert manifest.host_scale == pytest.approx(0.1)
    for before, after in zip(manifest.shards, manifest.shards[1:], strict=False):
        produced = {spec.name: spec for spec in before.outputs}
        (consumed,) = after.inputs
        # the host undoes the NPU's scale on the way out and re-applies it on the way in
        assert produced[consumed.name].scale * consumed.scale == pytest.approx(1.0)
        assert consumed.scale == pytest.approx(0.1)
    assert [spec.scale for spec in manifest.shards[-1].outputs] == [1.0, 1.0]
    assert all(shard.macs > 0 for shard in manifest.shards)
    assert set(manifest.toolchain) >= {"torch", "transformers", "onnx", "onnxruntime"}
    assert manifest.outputs == {"pooled": "pooled", "tokens": "tokens"}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("profile", ["seed", "pipeline3", "whole"])
@pytest.mark.parametrize("tile", [0, 24])
@pytest.mark.parametrize("barrier", ["none", "poison", "disable-rules", "both"])
def test_every_profile_tiling_and_barrier_matches_transformers(shard_factory, model, profile, tile, barrier):
    folder = shard_factory(model=model, profile=profile, tile=tile, barrier=barrier)
    tokens_cos, pooled_cos = _chain_vs_transformers(folder, model, seed=11)
    assert tokens_cos >= 0.99999
    assert pooled_cos is None or pooled_cos >= 0.99999


def test_seed_profile_yields_26_shards_for_12_layers(shard_factory):
    manifest = load_manifest(shard_factory(model="random:tiny-12", profile="seed"))
    assert len(manifest.shards) == 26
    assert manifest.shards[0].inputs[0].name == "pixel_values"
    assert [shard.layers for shard in manifest.shards[1:-1]] == [[layer] for layer in range(12) for _ in (0, 1)]
    names = [spec.name for shard in manifest.shards for spec in shard.outputs]
    assert len(names) == len(set(names))  # tensor names are unique across the chain
    # What each shard computes and how the graph was rewritten are recorded for consumers (the NPU timing sim).
    expected_blocks = [["embedding"], *([f"{kind}{i}"] for i in range(12) for kind in ("attention", "mlp")), ["final"]]
    assert [shard.blocks for shard in manifest.shards] == expected_blocks
    assert manifest.build == {"tile": 32, "barrier": "poison", "shards": 26}


def test_pipeline3_shards_are_mac_balanced(shard_factory):
    manifest = load_manifest(shard_factory(model="random:tiny-12", profile="pipeline3"))
    macs = [shard.macs for shard in manifest.shards]
    assert len(macs) == 3 and max(macs) <= 1.15 * min(macs)


def test_shard_count_override(shard_factory):
    folder = shard_factory(model="random:tiny-12", profile="pipeline3", shards=5)
    manifest = load_manifest(folder)
    assert len(manifest.shards) == 5
    tokens_cos, pooled_cos = _chain_vs_transformers(folder, "random:tiny-12")
    assert tokens_cos >= 0.99999 and pooled_cos >= 0.99999


def test_summary_table_names_each_shards_blocks(shard_factory):
    from rk_siglip_ros.builder.report import describe_blocks, summary_table

    labels = ["embedding", "attention0", "mlp0", "attention1", "mlp1", "attention2"]
    assert describe_blocks(labels) == "emb L0-1 L2.attn"
    assert describe_blocks(["mlp2", "attention3", "mlp3", "final"], head=False) == "L2.mlp L3 norm"
    manifest = load_manifest(shard_factory(model="random:tiny-12", profile="seed"))
    rows = [line.split()[:2] for line in summary_table(manifest).splitlines() if line.split()[0][1:].isdigit()]
    expected = ["emb", *(f"L{i}.{kind}" for i in range(12) for kind in ("attn", "mlp")), "norm+head"]
    assert rows == [[f"s{index}", label] for index, label in enumerate(expected)]
