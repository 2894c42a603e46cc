"""RKNN compile + x86 simulator (real rknn-toolkit2): the fp16 shard chain stays within cos 0.999 of fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rknn_simulator import simulator_chain

from rk_siglip_ros.builder.models import load_vision_tower
from rk_siglip_ros.builder.verify import cosine
from rk_siglip_ros.manifest import load_manifest

pytest.importorskip("rknn.api", reason="rknn-toolkit2 is not installed (x86_64/aarch64 workstation only)")


def _simulator_chain_cos(folder, model: str) -> dict[str, float]:
    """Recompile each shard from its ONNX file and run the chain on the simulator, independently of the build."""
    manifest = load_manifest(folder)
    tower = load_vision_tower(model)
    pixels = np.random.default_rng(21).normal(0.0, 0.6, (1, 3, tower.image_size, tower.image_size))
    pixels = pixels.astype(np.float32)
    tensors = simulator_chain(manifest, folder, pixels)
    pooled, tokens = tower.reference(torch.from_numpy(pixels))
    result = {"tokens": cosine(tensors["tokens"], tokens.numpy())}
    if manifest.outputs["pooled"]:
        result["pooled"] = cosine(tensors["pooled"], pooled.numpy())
    return result


@pytest.mark.parametrize("model", ["random:tiny", "random:tiny-smolvlm"])
def test_pipeline3_rknn_simulator_chain(shard_factory, model):
    folder = shard_factory(model=model, profile="pipeline3", formats=("onnx", "rknn"))
    manifest = load_manifest(folder)  # verifies the sha256 of every .onnx and .rknn
    assert manifest.has_files("rknn") and manifest.toolchain["rknn_toolkit2"]
    assert manifest.verification["rknn_sim_vs_fp32_cos"] >= 0.999
    assert all(entry["rknn_sim_cos"] >= 0.999 for entry in manifest.verification["per_shard"])
    assert min(_simulator_chain_cos(folder, model).values()) >= 0.999


def test_seed_tiled_with_both_barriers_on_the_simulator(shard_factory):
    folder = shard_factory(model="random:tiny-12", profile="seed", formats=("onnx", "rknn"), tile=24, barrier="both")
    manifest = load_manifest(folder)
    assert len(manifest.shards) == 26
    assert manifest.verification["rknn_sim_vs_fp32_cos"] >= 0.999
    assert manifest.verification["onnx_vs_fp32_cos"] >= 0.99999


def test_disable_rules_barrier_keeps_attention_unfused(shard_factory, tmp_path):
    """The compiled graph names its fused attention op; with the barrier's disable_rules it must not appear."""
    from rk_siglip_ros.builder.barrier import disabled_rules
    from rk_siglip_ros.builder.rknn_compile import compile_shard

    manifest = load_manifest(shard_factory(model="random:tiny", profile="seed", tile=0, barrier="none"))
    attention_half = manifest.shards[1]
    assert attention_half.layers == [0]
    found = {}
    for barrier in ("none", "disable-rules"):
        path = tmp_path / f"{barrier}.rknn"
        compile_shard(manifest.path(attention_half, "onnx"), path, "rk3588", "fp16", None, disabled_rules(barrier),
                      attention_half).release()
        found[barrier] = b"exSDPAttention" in path.read_bytes()
    assert found == {"none": True, "disable-rules": False}, f"exSDPAttention in the compiled graph: {found}"


def test_int8_build_calibrates_on_a_folder_of_images(tmp_path):
    from PIL import Image
    from skimage import data

    from rk_siglip_ros.builder.build import build_shards

    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(calibration / f"{name}.png")
    manifest = build_shards("random:tiny", tmp_path / "set", profile="whole", dtype="int8", calibration=calibration,
                            progress=False)
    assert manifest.dtype == "int8" and manifest.has_files("rknn")
    # int8 is lossy by design: it must still point the same way as fp32, and the ONNX files stay exact
    assert 0.98 <= manifest.verification["rknn_sim_vs_fp32_cos"] < 1.0
    assert manifest.verification["onnx_vs_fp32_cos"] >= 0.99999
    assert manifest.verification["thresholds"] == {"onnx": 0.99999, "rknn_sim": 0.98}  # what it was held to
    assert sorted(path.name for path in (tmp_path / "set").iterdir()) == ["manifest.json", "s0.onnx", "s0.rknn"]
