"""Model sources: saved checkpoints of both architectures load as the exact vision tower, and build."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rk_siglip_ros.builder.build import build_shards
from rk_siglip_ros.builder.models import ModelSourceError, load_vision_tower
from rk_siglip_ros.builder.verify import cosine, onnx_runner, run_chain
from rk_siglip_ros.manifest import load_manifest

TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                   patch_size=8)


@pytest.fixture(scope="module")
def full_siglip_checkpoint(tmp_path_factory):
    """A full SigLIP (vision + text) checkpoint, as google/siglip-* ships, with a non-default image processor."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(5)
    config = SiglipConfig(vision_config=TINY_VISION, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64000))
    model = SiglipModel(config).eval()
    folder = tmp_path_factory.mktemp("siglip-full")
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "resample": 2, "rescale_factor": 1 / 255,
        "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.4], "size": {"height": 64, "width": 64}}))
    return folder, model


def test_full_siglip_checkpoint_gives_its_vision_tower(full_siglip_checkpoint):
    folder, model = full_siglip_checkpoint
    tower = load_vision_tower(str(folder))
    assert tower.architecture == "siglip" and tower.head is not None
    source_state = model.vision_model.state_dict()
    for name, tensor in tower.transformer.state_dict().items():
        assert torch.equal(tensor, source_state[name]), name  # weights really loaded, not freshly initialised
    pixels = torch.randn(1, 3, 64, 64)
    pooled, tokens = tower.reference(pixels)
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixels)
    torch.testing.assert_close(tokens, expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected.pooler_output, rtol=1e-5, atol=1e-5)
    assert tower.preprocess.resample == "bilinear"
    assert tower.preprocess.mean == (0.4, 0.5, 0.6) and tower.preprocess.std == (0.2, 0.3, 0.4)


def test_full_siglip_checkpoint_builds(full_siglip_checkpoint, tmp_path):
    folder, model = full_siglip_checkpoint
    manifest = build_shards(str(folder), tmp_path / "set", formats=("onnx",), progress=False)
    assert manifest.preprocess.mean == (0.4, 0.5, 0.6)  # taken from the checkpoint's image processor config
    loaded = load_manifest(tmp_path / "set")
    pixels = np.random.default_rng(2).normal(0, 0.5, (1, 3, 64, 64)).astype(np.float32)
    tensors = run_chain(loaded, onnx_runner(loaded.root), pixels)
    with torch.no_grad():
        expected = model.vision_model(pixel_values=torch.from_numpy(pixels))
    assert cosine(tensors["pooled"], expected.pooler_output.numpy()) >= 0.99999
    assert cosine(tensors["tokens"], expected.last_hidden_state.numpy()) >= 0.99999


def test_saved_smolvlm_tower_checkpoint(tmp_path):
    from transformers import SmolVLMVisionConfig
    from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer

    torch.manual_seed(9)
    module = SmolVLMVisionTransformer(SmolVLMVisionConfig(**TINY_VISION)).eval()
    module.save_pretrained(tmp_path / "ckpt")
    tower = load_vision_tower(str(tmp_path / "ckpt"))
    assert tower.architecture == "smolvlm" and tower.head is None
    pixels = torch.randn(1, 3, 64, 64)
    _, tokens = tower.reference(pixels)
    with torch.no_grad():
        expected = module(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)
    manifest = build_shards(str(tmp_path / "ckpt"), tmp_path / "set", formats=("onnx",), progress=False)
    assert manifest.outputs["pooled"] is None and manifest.model.architecture == "smolvlm"


def test_smolvlm_full_vlm_layout_is_found(tmp_path):
    """A full SmolVLM checkpoint keeps the tower under model.vision_model. with the sizes in vision_config."""
    from safetensors.torch import save_file
    from transformers import SmolVLMVisionConfig
    from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer

    torch.manual_seed(4)
    module = SmolVLMVisionTransformer(SmolVLMVisionConfig(**TINY_VISION)).eval()
    folder = tmp_path / "vlm"
    folder.mkdir()
    state = {f"model.vision_model.{k}": v.contiguous() for k, v in module.state_dict().items()}
    state["model.text_model.embed_tokens.weight"] = torch.zeros(4, 4)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "smolvlm", "vision_config": {
        "model_type": "smolvlm_vision", **TINY_VISION}}))
    tower = load_vision_tower(str(folder))
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = module(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(tower.reference(pixels)[1], expected, rtol=1e-5, atol=1e-5)


def test_siglip_image_size_with_a_remainder_drops_it_like_transformers(tmp_path):
    """So400m/14 at 384 px is such a checkpoint: the patch conv drops the last pixels (27 x 27 patches)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from rk_siglip_ros.builder.build import build_shards

    SiglipVisionModel(SiglipVisionConfig(**{**TINY_VISION, "image_size": 60})).save_pretrained(tmp_path / "ckpt")
    assert load_vision_tower(str(tmp_path / "ckpt")).num_tokens == 7 * 7
    manifest = build_shards(str(tmp_path / "ckpt"), tmp_path / "set", profile="whole", formats=("onnx",),
                            progress=False)
    assert manifest.verification["onnx_vs_fp32_cos"] >= 0.99999


def test_smolvlm_image_size_not_divisible_by_patch_size(tmp_path):
    from transformers import SmolVLMVisionConfig
    from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer

    SmolVLMVisionTransformer(SmolVLMVisionConfig(**{**TINY_VISION, "image_size": 60})).save_pretrained(tmp_path / "bad")
    with pytest.raises(ModelSourceError, match="not divisible by patch size"):
        load_vision_tower(str(tmp_path / "bad"))


def test_unreachable_or_unknown_hub_id_is_a_clear_error():
    # Either the hub is unreachable (this machine) or the repository does not exist: one actionable message.
    with pytest.raises(ModelSourceError, match="could not download from the Hugging Face hub.*--model DIR"):
        load_vision_tower("rk-siglip-ros-tests/no-such-model-here")
