"""The encoder's core property, end to end through `encode_images`: on every builder profile, in every scheduler
mode, the embedding of a real photo equals transformers' own pooled output for the same photo preprocessed by the
Hugging Face image processor (cos >= 0.9999)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from rk_siglip_ros.builder.models import hf_image_processor, load_vision_tower
from rk_siglip_ros.cli.encode_images import main as encode_images
from rk_siglip_ros.cli.encode_images import read_image

MODES = ("sequential", "pipeline", "replicas")
# Different sizes and aspect ratios (downscales and an upscale), PNG and JPEG.
PHOTOS = (("astronaut", (512, 512), "png"), ("coffee", (400, 600), "jpg"), ("chelsea", (300, 451), "png"),
          ("rocket", (427, 640), "jpg"), ("camera", (512, 512), "png"), ("chelsea", (40, 50), "png"))


def write_photos(folder: Path) -> list[Path]:
    paths = []
    for index, (name, (height, width), suffix) in enumerate(PHOTOS):
        pixels = getattr(photos, name)()
        image = Image.fromarray(pixels).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        path = folder / f"{index}-{name}.{suffix}"
        image.save(path, quality=92) if suffix == "jpg" else image.save(path)
        paths.append(path)
    return paths


def hf_reference(model: str, paths: list[Path]) -> np.ndarray:
    """transformers' pooled output (SigLIP head, or the token mean for the SmolVLM tower), L2-normalised."""
    tower = load_vision_tower(model)
    processor = hf_image_processor(tower)
    rows = []
    for path in paths:
        pixel_values = processor(images=[read_image(path)], return_tensors="pt")["pixel_values"]
        pooled, _ = tower.reference(pixel_values.to(torch.float32))
        vector = pooled[0].double().numpy()
        rows.append(vector / np.linalg.norm(vector))
    return np.stack(rows)


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[Path]:
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.mark.parametrize("model", ["random:tiny", "random:tiny-smolvlm"])
@pytest.mark.parametrize("profile", ["whole", "pipeline3", "seed"])
def test_encode_images_matches_transformers(shard_factory, photo_files, tmp_path, model, profile):
    shards = shard_factory(model=model, profile=profile)
    reference = hf_reference(model, photo_files)
    for mode in MODES:
        out = tmp_path / f"{mode}.npy"
        assert encode_images(["--shards", str(shards), "--backend", "onnxruntime", "--mode", mode,
                              *map(str, photo_files), "--out", str(out)]) == 0
        embeddings = np.load(out)
        assert embeddings.dtype == np.float32 and embeddings.shape == reference.shape
        assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
        cosines = np.sum(embeddings * reference, axis=1)
        assert cosines.min() >= 0.9999, (mode, cosines)
    # rows follow the arguments: different photos give clearly different embeddings in argument order
    reversed_out = tmp_path / "reversed.npy"
    assert encode_images(["--shards", str(shards), "--backend", "onnxruntime", *map(str, photo_files[::-1]),
                          "--out", str(reversed_out)]) == 0
    assert np.allclose(np.load(reversed_out)[::-1], embeddings, atol=1e-5)


def test_encode_images_reports_bad_inputs(tmp_path, shard_factory, capsys):
    shards = shard_factory()
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    assert encode_images(["--shards", str(shards), str(text_file), "--out", str(tmp_path / "x.npy")]) == 2
    assert "cannot read as an image" in capsys.readouterr().err
    photo = write_photos(tmp_path)[0]
    # A missing shard set is bad input: exit 2, as in every tool (it was 1 here and 2 in encode_bag).
    assert encode_images(["--shards", str(tmp_path / "none"), str(photo), "--out", str(tmp_path / "x.npy")]) == 2
    assert "no shard set" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()
