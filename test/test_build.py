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
    assert manifest.verification["onnx_vs_fp32_cos"] >= 0.99999
    assert all(shard.macs > 0 for shard in manifest.shards)
    assert set(manifest.toolchain) >= {"torch", "transformers", "onnx", "onnxruntime"}
    assert manifest.outputs == {"pooled": "pooled", "tokens": "tokens"}
