"""The split profile (sequence-parallel layers) of a checkpoint that is no preset: a tiny SigLIP vision tower saved
the way transformers saves it. Its shard set must equal the checkpoint's own transformers model on real photos
(ONNX Runtime, fp32) and compile and verify on the RKNN simulator (fp16)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from rknn_simulator import simulator_chain
from skimage import data as photos

from rk_siglip_ros.builder.build import BuildInputError, build_shards
from rk_siglip_ros.builder.split_layers import token_slices
from rk_siglip_ros.builder.verify import cosine, onnx_runner, run_chain
from rk_siglip_ros.manifest import ManifestError, load_manifest

PHOTOS = ("astronaut", "coffee", "chelsea")
# 7 x 7 = 49 tokens: not divisible by 3 parts, so slices differ in size (17/16/16) and a rotated graph computes a
# spare row for the shorter slices.
IMAGE_SIZE, PATCH = 56, 8
LAYERS = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    folder = tmp_path_factory.mktemp("siglip-vision-ckpt")
    torch.manual_seed(11)
    config = SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=LAYERS,
                                num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH)
    model = SiglipVisionModel(config).eval()
    with torch.no_grad():  # trained LayerNorms are not identities: a wrong eps fold or slice would show
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def split_onnx(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "set"
    build_shards(str(checkpoint), out, profile="split", formats=("onnx",), progress=False)
    return out


def transformers_outputs(checkpoint, images):
    from transformers import AutoImageProcessor, SiglipVisionModel

    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = SiglipVisionModel.from_pretrained(checkpoint).eval()
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = model(pixel_values=pixels)
    return pixels.numpy(), output.pooler_output.numpy(), output.last_hidden_state.numpy()


def test_token_slices_cover_the_tokens_in_near_equal_parts():
    assert token_slices(1024, 3) == [(0, 342), (342, 683), (683, 1024)]
    assert token_slices(49, 3) == [(0, 17), (17, 33), (33, 49)]
    with pytest.raises(ValueError, match="1..49 parts"):
        token_slices(49, 50)


def test_split_manifest_describes_stages_of_parts_and_the_gather(split_onnx):
    manifest = load_manifest(split_onnx)
    assert manifest.profile == "split" and manifest.build["parts"] == 3
    # layer 0: one graph per part (the embedding rides in it); one rotated graph per later layer; one final call
    assert [shard.name for shard in manifest.shards] == ["l0p0", "l0p1", "l0p2", "l1", "l2", "final"]
    stages = manifest.stages
    assert [stage.name for stage in stages] == ["layer0", "layer1", "layer2", "final"]
    assert [(p.shard, p.start, p.stop, p.rotate) for p in stages[1].parts] == [
        ("l1", 0, 17, 0), ("l1", 17, 33, 17), ("l1", 33, 49, 33)]
    assert all(stage.gather.shape == (1, 49, 48) for stage in stages[:-1]) and stages[-1].gather is None
    assert manifest.shard("l1").outputs[0].shape == (1, 17, 48)  # the widest slice; shorter ones drop a row
    assert manifest.shard("l0p2").blocks == ["embedding", "attention0", "mlp0"]
    # per part: all K, V; its own Q, out, MLP; its queries' scores against every key
    tokens, width, mlp = 49, 48, 96
    assert manifest.shard("l1").attention_macs == 2 * 17 * tokens * width
    assert manifest.shard("l1").macs == (2 * tokens * width * width + 2 * 17 * width * width
                                         + 2 * 17 * width * mlp + 2 * 17 * tokens * width)
    assert json.loads((split_onnx / "manifest.json").read_text())["version"] == 2


def test_split_onnx_equals_the_checkpoints_transformers_model_on_photos(checkpoint, split_onnx):
    manifest = load_manifest(split_onnx)
    assert manifest.verification["onnx_vs_fp32_cos"] >= 0.99999
    pixels, pooled, tokens = transformers_outputs(checkpoint, [getattr(photos, name)() for name in PHOTOS])
    runner = onnx_runner(split_onnx)
    for index, name in enumerate(PHOTOS):
        ours = run_chain(manifest, runner, pixels[index:index + 1])
        assert cosine(ours["pooled"], pooled[index]) >= 0.99999, name
        assert cosine(ours["tokens"], tokens[index]) >= 0.99999, name


def test_split_composes_with_tiles_and_other_part_counts(checkpoint, tmp_path):
    manifest = build_shards(str(checkpoint), tmp_path / "tiled", profile="split", shards=2, tile=8,
                            barrier="poison", formats=("onnx",), progress=False)
    assert manifest.build["tile"] == 8 and len(manifest.stages[0].parts) == 2
    assert manifest.verification["onnx_vs_fp32_cos"] >= 0.99999


def test_split_refuses_more_parts_than_tokens(checkpoint, tmp_path):
    with pytest.raises(BuildInputError, match="--shards 50"):
        build_shards(str(checkpoint), tmp_path / "x", profile="split", shards=50, formats=("onnx",), progress=False)


def _edited(split_onnx, tmp_path, edit):
    folder = tmp_path / "edited"
    shutil.copytree(split_onnx, folder)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError) as caught:
        load_manifest(folder)
    return str(caught.value)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["stages"][1]["parts"][1].update(start=18), "must tile [0, 49) in order"),
    (lambda d: d["stages"][1]["parts"].pop(), "cover rows [0, 33) of 49"),
    (lambda d: d["stages"][1]["parts"][2].update(rotate=49), "rotates its input"),
    (lambda d: d["stages"][0]["parts"][2].update(rotate=5), "rotates its input"),  # pixels are no tokens
    (lambda d: d["stages"].pop(2), "shards ['l2'] are in no stage"),
    (lambda d: d["stages"][1]["gather"].update(scale=1.0), "differs from the gather's"),
    (lambda d: d.update(version=1), "version 1 manifest cannot have stages"),
])
def test_broken_stage_plans_are_refused(split_onnx, tmp_path, edit, expected):
    assert expected in _edited(split_onnx, tmp_path, edit)


def test_a_version_1_manifest_still_loads(shard_factory, tmp_path):
    folder = tmp_path / "v1"
    shutil.copytree(shard_factory(model="random:tiny", profile="pipeline3"), folder)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["version"] = 1
    for shard in data["shards"]:
        del shard["attention_macs"]
    path.write_text(json.dumps(data))
    manifest = load_manifest(folder)
    assert not manifest.stages and [s.name for s in manifest.execution_stages()] == ["s0", "s1", "s2"]
    assert all(shard.attention_macs is None for shard in manifest.shards)


def test_split_compiles_and_verifies_on_the_rknn_simulator(checkpoint, tmp_path):
    pytest.importorskip("rknn.api", reason="rknn-toolkit2 is not installed (x86_64/aarch64 workstation only)")

    manifest = build_shards(str(checkpoint), tmp_path / "set", profile="split", formats=("onnx", "rknn"),
                            progress=False)
    assert manifest.has_files("rknn") and manifest.verification["rknn_sim_vs_fp32_cos"] >= 0.999
    assert all(entry["rknn_sim_cos"] >= 0.999 for entry in manifest.verification["per_shard"])
    # independently of the build: recompile every graph and run the stages on the simulator against transformers
    pixels, pooled, tokens = transformers_outputs(checkpoint, [photos.chelsea()])
    ours = simulator_chain(manifest, tmp_path, pixels)
    assert cosine(ours["pooled"], pooled[0]) >= 0.999 and cosine(ours["tokens"], tokens[0]) >= 0.999
    assert np.isfinite(ours["tokens"]).all()
