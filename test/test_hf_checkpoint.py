"""A checkpoint folder as Hugging Face saves it (config.json, model.safetensors, preprocessor_config.json) through the
whole path: build_shards reads it, the runtime encodes photos, and transformers' own AutoImageProcessor + model give
the same embeddings. The processor config uses non-default mean/std/resample so that reading it is checked too."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import data as photos
from transformers import AutoImageProcessor, SiglipConfig, SiglipImageProcessor, SiglipModel

from rk_siglip_ros.builder.build import build_shards
from rk_siglip_ros.builder.models import ModelSourceError
from rk_siglip_ros.runtime.encoder import SiglipEncoder

IMAGE_SIZE = 48
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # colour and greyscale, various sizes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny full SigLIP (vision + text towers), random weights, saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("siglip-checkpoint")
    torch.manual_seed(5)
    config = SiglipConfig(
        vision_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": IMAGE_SIZE, "patch_size": 8},
        text_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "vocab_size": 128, "max_position_embeddings": 16, "bos_token_id": 1, "eos_token_id": 2,
                     "pad_token_id": 0})
    SiglipModel(config).eval().save_pretrained(folder)
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=2,  # PIL bilinear
                         image_mean=[0.48, 0.46, 0.41], image_std=[0.27, 0.26, 0.28]).save_pretrained(folder)
    return folder


def rgb(name: str) -> np.ndarray:
    image = getattr(photos, name)()
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]


def test_runtime_equals_transformers_auto_classes(checkpoint, tmp_path):
    manifest = build_shards(str(checkpoint), tmp_path / "shards", formats=("onnx",), progress=False)
    assert manifest.preprocess.resample == "bilinear"
    assert manifest.preprocess.mean == pytest.approx([0.48, 0.46, 0.41])
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = SiglipModel.from_pretrained(checkpoint).eval()
    images = [rgb(name) for name in PHOTOS]
    with SiglipEncoder.open(tmp_path / "shards", backend="onnxruntime") as encoder:
        ours = np.stack(encoder.encode_batch(images))
    with torch.no_grad():
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        features = model.get_image_features(pixel_values=pixel_values)
    theirs = getattr(features, "pooler_output", features).numpy()
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    cosines = np.sum(ours * theirs, axis=1)
    assert cosines.min() >= 0.9999, dict(zip(PHOTOS, cosines.round(6), strict=True))


def test_siglip2_is_refused_with_one_line(tmp_path):
    """SigLIP 2 (NaFlex) embeds patches with a linear layer over variable-size patch sequences: not this builder's
    graph. Say so instead of building something else."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2", "vision_config": {}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="SigLIP 2 .* not supported"):
        build_shards(str(tmp_path), tmp_path / "out", formats=("onnx",), progress=False)
