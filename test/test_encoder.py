"""SiglipEncoder on real ONNX Runtime: host scales applied exactly as the manifest says, tokens, pooling, stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_manifest import TOY_DIM, TOY_TOKENS, TOY_WIDTH, toy_reference, toy_weights, write_toy_shards

from rk_siglip_ros.builder.models import hf_image_processor, load_vision_tower
from rk_siglip_ros.manifest import load_manifest
from rk_siglip_ros.runtime.encoder import SiglipEncoder
from rk_siglip_ros.runtime.preprocess import Preprocessor

MODES = ("sequential", "pipeline", "replicas")


def images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(20 + 3 * i, 30 - i, 3), dtype=np.uint8) for i in range(count)]


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("hidden_scale", "block_in_scale"), [(10.0, 0.1), (2.0, 0.5), (0.25, 4.0)])
def test_host_scales_between_shards(tmp_path, mode, hidden_scale, block_in_scale):
    """The toy shards only compute the true chain if the host multiplies by each declared scale (or skips a pair
    multiplying to one)."""
    folder = write_toy_shards(tmp_path / "toy", hidden_scale=hidden_scale, block_in_scale=block_in_scale)
    manifest = load_manifest(folder)
    preprocess = Preprocessor(manifest.preprocess)
    batch = images(5)
    with SiglipEncoder.open(folder, backend="onnxruntime", mode=mode) as encoder:
        embeddings = encoder.encode_batch(batch)
    expected = np.stack([unit(toy_reference(preprocess(image), toy_weights())) for image in batch])
    assert embeddings.shape == (5, TOY_DIM) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


def test_host_pooling_when_the_model_has_no_head(tmp_path):
    folder = write_toy_shards(tmp_path / "toy", head=False, hidden_scale=10.0, block_in_scale=0.1)
    preprocess = Preprocessor(load_manifest(folder).preprocess)
    image = images(1)[0]
    with SiglipEncoder.open(folder, backend="onnxruntime") as encoder:
        assert encoder.embedding_dim == TOY_WIDTH
        result = encoder.submit(image, tokens=True).result()
    np.testing.assert_allclose(result.embedding, unit(toy_reference(preprocess(image), toy_weights(), head=False)),
                               atol=1e-5)
    assert result.tokens.shape == (TOY_TOKENS, TOY_WIDTH)
    np.testing.assert_allclose(result.embedding, unit(result.tokens.mean(axis=0)), atol=1e-6)
    assert result.latency_s > 0


@pytest.mark.parametrize("profile", ["pipeline3", "seed"])
def test_tokens_equal_the_transformers_last_hidden_state(shard_factory, profile):
    """Tokens leave the chain in true units (the 0.1 residual scale undone on the host)."""
    tower = load_vision_tower("random:tiny")
    image = np.random.default_rng(3).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    pixel_values = hf_image_processor(tower)(images=[image], return_tensors="pt")["pixel_values"]
    _, tokens = tower.reference(pixel_values.to(torch.float32))
    with SiglipEncoder.open(shard_factory(profile=profile), backend="onnxruntime", mode="pipeline") as encoder:
        assert encoder.manifest.host_scale == pytest.approx(0.1)
        result = encoder.submit(image, tokens=True).result()
        assert encoder.submit(image).result().tokens is None
    np.testing.assert_allclose(result.tokens, tokens[0].numpy(), atol=2e-4, rtol=1e-4)


def test_stats_cover_every_core_and_shard(shard_factory):
    with SiglipEncoder.open(shard_factory(profile="seed"), backend="onnxruntime", mode="pipeline") as encoder:
        assert encoder.capacity == 3 and encoder.in_flight == 0
        encoder.core_busy()
        encoder.encode_batch(images(6))
        busy = encoder.core_busy()
        times = encoder.shard_times()
        host = encoder.host_times()
    assert set(busy) == {0, 1, 2} and all(0 < fraction <= 1 for fraction in busy.values())
    assert set(times) == {shard.name for shard in encoder.manifest.shards} and all(t > 0 for t in times.values())
    assert host.frames == 6 and host.preprocess_s > 0 and host.postprocess_s > 0 and host.scales_s >= 0


def test_whole_profile_in_pipeline_mode_uses_one_stage(shard_factory):
    with SiglipEncoder.open(shard_factory(profile="whole"), backend="onnxruntime", mode="pipeline") as encoder:
        assert encoder.scheduler.plan == [[(0, 0)]] and encoder.capacity == 1


def test_open_refuses_unknown_mode_and_backend(tmp_path):
    folder = write_toy_shards(tmp_path / "toy")
    with pytest.raises(ValueError, match="unknown mode"):
        SiglipEncoder.open(folder, mode="turbo")
    with pytest.raises(RuntimeError, match="unknown backend"):
        SiglipEncoder.open(folder, backend="cuda")


def test_open_takes_a_loaded_manifest_and_hashes_only_kinds_not_yet_verified(tmp_path, monkeypatch):
    import rk_siglip_ros.manifest as manifest_module
    from rk_siglip_ros.manifest import ManifestError

    folder = write_toy_shards(tmp_path / "toy")
    hashed: list[str] = []
    real_sha256 = manifest_module.file_sha256
    monkeypatch.setattr(manifest_module, "file_sha256", lambda path: hashed.append(path.name) or real_sha256(path))
    image = images(1)[0]
    with SiglipEncoder.open(folder, backend="onnxruntime", mode="sequential") as from_folder:
        expected = from_folder.encode(image)
    assert len(hashed) == 3  # three .onnx shards, hashed by open()

    hashed.clear()
    verified = load_manifest(folder, verify=("onnx",))
    assert verified.verified_kinds == {"onnx"} and len(hashed) == 3
    for mode in MODES:  # e.g. bench: one manifest, one encoder per mode, no hashing after the load
        with SiglipEncoder.open(verified, backend="onnxruntime", mode=mode) as encoder:
            np.testing.assert_allclose(encoder.encode(image), expected, rtol=1e-6, atol=1e-7)
    assert len(hashed) == 3

    unverified = load_manifest(folder, verify=())
    assert unverified.verified_kinds == frozenset()
    (folder / unverified.shards[0].onnx).write_bytes(b"not the shard that was hashed")
    with pytest.raises(ManifestError, match="modified or corrupted"):
        SiglipEncoder.open(unverified, backend="onnxruntime")
    unverified.root = None
    with pytest.raises(ManifestError, match="root folder"):
        SiglipEncoder.open(unverified, backend="onnxruntime")


def test_the_runtime_imports_no_torch_transformers_or_rknn(tmp_path):
    """Layering: encoding with ONNX Runtime or the sim must not pull in the builder's stack."""
    import subprocess
    import sys

    folder = write_toy_shards(tmp_path / "toy")
    code = (
        "import sys, numpy as np\n"
        "from rk_siglip_ros.runtime.encoder import SiglipEncoder\n"
        "import rk_siglip_ros.cli.bench, rk_siglip_ros.cli.encode_images\n"
        "image = np.zeros((9, 9, 3), np.uint8)\n"
        f"with SiglipEncoder.open({str(folder)!r}, backend='onnxruntime') as e: e.encode(image)\n"
        f"with SiglipEncoder.open({str(folder)!r}, backend='sim', time_scale=0.01) as e: e.encode(image)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'rknn', 'rknnlite')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
