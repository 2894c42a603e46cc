"""Host preprocessing equals the Hugging Face image processor (the reference every embedding is checked against)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as photos

from rk_siglip_ros.builder.models import hf_image_processor
from rk_siglip_ros.manifest import PreprocessSpec
from rk_siglip_ros.runtime.postprocess import l2_normalise, pooled_embedding
from rk_siglip_ros.runtime.preprocess import RESAMPLE_FILTERS, Preprocessor, check_image, resample_filters


class _Tower:
    def __init__(self, spec: PreprocessSpec) -> None:
        self.preprocess = spec


def hf_pixels(spec: PreprocessSpec, image: np.ndarray) -> np.ndarray:
    return np.asarray(hf_image_processor(_Tower(spec))(images=[image], return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
@pytest.mark.parametrize("size", [(64, 64), (224, 224), (96, 160)])
@pytest.mark.parametrize("resample", ["bicubic", "bilinear"])
def test_matches_the_hf_image_processor(name, size, resample):
    image = getattr(photos, name)()
    spec = PreprocessSpec(size=size, resample=resample, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    ours = Preprocessor(spec)(image)
    assert ours.shape == (1, 3, *size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, hf_pixels(spec, image), atol=2e-6, rtol=0)


def test_upscaling_and_same_size_inputs():
    spec = PreprocessSpec(size=(64, 64))
    small = photos.chelsea()[::20, ::20].copy()
    np.testing.assert_allclose(Preprocessor(spec)(small), hf_pixels(spec, small), atol=2e-6, rtol=0)
    exact = photos.astronaut()[:64, :64].copy()
    np.testing.assert_allclose(Preprocessor(spec)(exact), hf_pixels(spec, exact), atol=2e-6, rtol=0)


def test_input_scale_is_folded_in():
    spec = PreprocessSpec(size=(32, 32))
    image = photos.coffee()
    np.testing.assert_allclose(Preprocessor(spec, input_scale=0.1)(image), 0.1 * Preprocessor(spec)(image),
                               atol=1e-6, rtol=1e-6)


def test_nhwc_and_bgr_layouts():
    image = photos.astronaut()
    nchw = Preprocessor(PreprocessSpec(size=(32, 32)))(image)
    nhwc = Preprocessor(PreprocessSpec(size=(32, 32), layout="NHWC"))(image)
    bgr = Preprocessor(PreprocessSpec(size=(32, 32), color="BGR"))(image)
    np.testing.assert_allclose(nhwc, nchw.transpose(0, 2, 3, 1), atol=1e-6)
    np.testing.assert_allclose(bgr, nchw[:, ::-1], atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.uint16), np.zeros((4, 0, 3), np.uint8), [[1, 2, 3]]])
def test_bad_images_are_value_errors(bad):
    with pytest.raises(ValueError):
        check_image(bad)


def test_unsupported_preprocess_values_are_refused():
    with pytest.raises(ValueError, match="resample"):
        Preprocessor(PreprocessSpec(size=(8, 8), resample="magic"))
    with pytest.raises(ValueError, match="layout"):
        Preprocessor(PreprocessSpec(size=(8, 8), layout="CHW"))


def test_pooling_and_normalising():
    tokens = np.random.default_rng(0).normal(size=(1, 5, 4)).astype(np.float32)
    expected = tokens[0].mean(axis=0)
    np.testing.assert_allclose(pooled_embedding(None, tokens), expected / np.linalg.norm(expected), rtol=1e-6)
    pooled = np.array([[3.0, 4.0]], np.float32)
    np.testing.assert_allclose(pooled_embedding(pooled, tokens), [0.6, 0.8], rtol=1e-6)
    assert np.all(l2_normalise(np.zeros(3, np.float32)) == 0)


def test_resample_filters_work_with_pillow_9_0_names():
    """Ubuntu 22.04 (Humble) ships Pillow 9.0.1: module constants only, no Image.Resampling (9.1+). A stand-in
    module with exactly 9.0's names must give the same filters as this Pillow; so must one with only the enum
    (Pillow 10+ removed the constants)."""
    from types import SimpleNamespace

    from PIL import Image

    pillow_9_0 = SimpleNamespace(NEAREST=0, LANCZOS=1, BILINEAR=2, BICUBIC=3, BOX=4, HAMMING=5)  # PIL/Image.py 9.0.1
    assert resample_filters(pillow_9_0) == RESAMPLE_FILTERS
    enum_only = SimpleNamespace(Resampling=Image.Resampling)
    assert resample_filters(enum_only) == RESAMPLE_FILTERS
    assert RESAMPLE_FILTERS["bicubic"] == 3 and set(RESAMPLE_FILTERS) == {"nearest", "bilinear", "bicubic", "lanczos",
                                                                        "box", "hamming"}
