"""Shard sets that pass a naive check but would give wrong embeddings or fail every frame: refused at
load or open with one line naming the file."""

from __future__ import annotations

import json
import math

import pytest
from test_manifest import write_toy_shards

from rk_siglip_ros.manifest import ManifestError, load_manifest
from rk_siglip_ros.runtime.backends import BackendError
from rk_siglip_ros.runtime.encoder import SiglipEncoder


def edited(tmp_path, edit):
    folder = write_toy_shards(tmp_path / "toy", hidden_scale=10.0, block_in_scale=0.1)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return folder


def load_error(folder) -> str:
    with pytest.raises(ManifestError) as caught:
        load_manifest(folder)
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message
    return message


@pytest.mark.parametrize("std", [0.0, float("nan"), -0.5, float("inf")])
def test_preprocess_std_that_would_make_every_frame_nan_is_refused(tmp_path, std):
    def edit(data):
        data["preprocess"]["std"] = [0.5, std, 0.5]
    assert "preprocess.std must be finite and positive" in load_error(edited(tmp_path, edit))


@pytest.mark.parametrize("field", ["mean", "rescale"])
def test_non_finite_mean_or_rescale_is_refused(tmp_path, field):
    def edit(data):
        data["preprocess"][field] = [0.5, math.nan, 0.5] if field == "mean" else math.nan
    assert "preprocess" in load_error(edited(tmp_path, edit))


@pytest.mark.parametrize("scale", [-1.0, 1e-30, 1e30])
def test_final_output_scale_out_of_range_is_refused(tmp_path, scale):
    """A negative pooled scale gave cos -1.0 against the right embedding; 1e-30 underflowed (cos 0.35)."""
    def edit(data):
        data["shards"][-1]["outputs"][0]["scale"] = scale
    assert "'pooled' scale" in load_error(edited(tmp_path, edit))


def test_a_scale_pair_that_does_not_multiply_to_one_is_refused(tmp_path):
    def edit(data):
        data["shards"][1]["inputs"][0]["scale"] = 0.2  # the embed shard writes 10.0
    message = load_error(edited(tmp_path, edit))
    assert "shard embed writes 'hidden' with scale 10.0 and shard block reads it with scale 0.2" in message


def test_the_builders_own_scales_pass(tmp_path):
    manifest = load_manifest(write_toy_shards(tmp_path / "toy", hidden_scale=10.0, block_in_scale=0.1))
    assert manifest.shards[0].outputs[0].scale * manifest.shards[1].inputs[0].scale == pytest.approx(1.0)


def test_a_preprocess_size_the_onnx_input_does_not_take_is_refused_at_open(tmp_path):
    """Manifest edited consistently (size and first input shape), ONNX file unchanged: found at open, not per frame."""
    def edit(data):
        data["preprocess"]["size"] = [16, 16]
        data["shards"][0]["inputs"][0]["shape"] = [1, 3, 16, 16]
    folder = edited(tmp_path, edit)
    with pytest.raises(BackendError, match=r"input 'pixel_values': the ONNX graph expects \[1, 3, 8, 8\], the "
                                           r"manifest declares \[1, 3, 16, 16\]"):
        SiglipEncoder.open(folder, backend="onnxruntime")


def test_a_manifest_that_is_not_utf8_is_one_line_with_the_path(tmp_path):
    folder = write_toy_shards(tmp_path / "toy")
    path = folder / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"toy"', b'"\xff\xfe"', 1))
    assert "not UTF-8" in load_error(folder)
