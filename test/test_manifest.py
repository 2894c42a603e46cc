"""Manifest loading and tampering: a shard set that has been altered is refused at open, with a message that says
which file and what to do. Also home of ``write_toy_shards``: a real (tiny, hand-made) ONNX shard chain with known
weights and host scales, used by the runtime tests that must not depend on the builder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rk_siglip_ros.manifest import (
    Manifest,
    ManifestError,
    ModelInfo,
    PreprocessSpec,
    ShardSpec,
    TensorSpec,
    load_manifest,
    record_hashes,
    save_manifest,
)
from rk_siglip_ros.runtime.encoder import SiglipEncoder

TOY_SIZE, TOY_TOKENS, TOY_WIDTH, TOY_DIM = 8, 4, 6, 5


def _graph(name: str, nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(value, key) for key, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _value(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def toy_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    patch = 3 * TOY_SIZE * TOY_SIZE // TOY_TOKENS
    return {"w0": rng.normal(size=(patch, TOY_WIDTH)).astype(np.float32) * 0.2,
            "w1": rng.normal(size=(TOY_WIDTH, TOY_WIDTH)).astype(np.float32),
            "b1": rng.normal(size=(TOY_WIDTH,)).astype(np.float32),
            "w2": rng.normal(size=(TOY_WIDTH, TOY_DIM)).astype(np.float32)}


def toy_reference(pixel_values: np.ndarray, weights: dict[str, np.ndarray], head: bool = True) -> np.ndarray:
    """What the toy chain computes, in numpy (float64), with no host scales: the ground truth."""
    x = pixel_values.astype(np.float64).reshape(1, TOY_TOKENS, -1) @ weights["w0"]
    tokens = np.tanh(x @ weights["w1"] + weights["b1"])
    return (tokens.mean(axis=1) @ weights["w2"])[0] if head else tokens.mean(axis=1)[0]


def write_toy_shards(folder: Path, *, head: bool = True, hidden_scale: float = 1.0, block_in_scale: float = 1.0,
                     seed: int = 0, toolkit: str | None = None) -> Path:
    """A 3-shard (2 without head) chain: embed (reshape+matmul) -> block (matmul+add+tanh) -> head (mean+matmul).

    The embed shard's NPU output carries ``hidden / hidden_scale`` (weights pre-divided) and declares output scale
    ``hidden_scale``; the block shard's graph expects ``hidden * block_in_scale`` and undoes it, so the chain equals
    :func:`toy_reference` only if the host applies both scales exactly as the manifest says.
    """
    folder.mkdir(parents=True, exist_ok=True)
    w = toy_weights(seed)
    patch = 3 * TOY_SIZE * TOY_SIZE // TOY_TOKENS
    embed = _graph("embed", [
        helper.make_node("Reshape", ["pixel_values", "shape0"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w0"], ["hidden"]),
    ], [_value("pixel_values", [1, 3, TOY_SIZE, TOY_SIZE])], [_value("hidden", [1, TOY_TOKENS, TOY_WIDTH])],
        {"shape0": np.array([1, TOY_TOKENS, patch], dtype=np.int64), "w0": w["w0"] / np.float32(hidden_scale)})
    block = _graph("block", [
        helper.make_node("MatMul", ["hidden", "w1"], ["mm"]),
        helper.make_node("Add", ["mm", "b1"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["tokens"]),
    ], [_value("hidden", [1, TOY_TOKENS, TOY_WIDTH])], [_value("tokens", [1, TOY_TOKENS, TOY_WIDTH])],
        {"w1": w["w1"] / np.float32(block_in_scale), "b1": w["b1"]})
    onnx.save(embed, folder / "embed.onnx")
    onnx.save(block, folder / "block.onnx")
    shards = [
        ShardSpec("embed", [TensorSpec("pixel_values", (1, 3, TOY_SIZE, TOY_SIZE))],
                  [TensorSpec("hidden", (1, TOY_TOKENS, TOY_WIDTH), scale=hidden_scale)], onnx="embed.onnx",
                  macs=TOY_TOKENS * patch * TOY_WIDTH),
        ShardSpec("block", [TensorSpec("hidden", (1, TOY_TOKENS, TOY_WIDTH), scale=block_in_scale)],
                  [TensorSpec("tokens", (1, TOY_TOKENS, TOY_WIDTH))], onnx="block.onnx", layers=[0],
                  macs=TOY_TOKENS * TOY_WIDTH * TOY_WIDTH),
    ]
    if head:
        onnx.save(_graph("head", [
            helper.make_node("ReduceMean", ["tokens"], ["mean"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["mean", "w2"], ["pooled"]),
        ], [_value("tokens", [1, TOY_TOKENS, TOY_WIDTH])], [_value("pooled", [1, TOY_DIM])], {"w2": w["w2"]}),
            folder / "head.onnx")
        shards.append(ShardSpec("head", [TensorSpec("tokens", (1, TOY_TOKENS, TOY_WIDTH))],
                                [TensorSpec("pooled", (1, TOY_DIM))], onnx="head.onnx", macs=TOY_WIDTH * TOY_DIM))
    toolchain = {"rknn_toolkit2": toolkit} if toolkit else {}
    manifest = Manifest(
        model=ModelInfo("toy", "siglip" if head else "smolvlm", TOY_SIZE, TOY_SIZE // 2, TOY_WIDTH, TOY_TOKENS,
                        TOY_DIM if head else TOY_WIDTH),
        preprocess=PreprocessSpec(size=(TOY_SIZE, TOY_SIZE)), shards=shards,
        outputs={"pooled": "pooled" if head else None, "tokens": "tokens"}, profile="toy", toolchain=toolchain)
    record_hashes(manifest, folder)
    save_manifest(manifest, folder)
    return folder


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return write_toy_shards(tmp_path / "toy")


def _open_error(folder: Path) -> str:
    with pytest.raises(ManifestError) as caught:
        SiglipEncoder.open(folder, backend="onnxruntime", mode="sequential")
    return str(caught.value)


def test_toy_shard_set_loads_and_opens(toy):
    manifest = load_manifest(toy)
    assert [s.name for s in manifest.shards] == ["embed", "block", "head"]
    with SiglipEncoder.open(toy, backend="onnxruntime", mode="sequential") as encoder:
        assert encoder.embedding_dim == TOY_DIM


def test_changed_byte_in_a_shard_file_is_rejected(toy):
    data = bytearray((toy / "block.onnx").read_bytes())
    data[-1] ^= 0x01
    (toy / "block.onnx").write_bytes(bytes(data))
    message = _open_error(toy)
    assert "block.onnx" in message and "modified or corrupted" in message and "build_shards" in message


def test_path_escaping_the_folder_is_rejected(toy):
    _edit_manifest(toy, lambda d: d["shards"][1].update(onnx="../block.onnx"))
    message = _open_error(toy)
    assert "'../block.onnx'" in message and "leaves the shard folder" in message


def test_absolute_path_is_rejected(toy):
    _edit_manifest(toy, lambda d: d["shards"][1].update(onnx=str((toy / "block.onnx").resolve())))
    assert "leaves the shard folder" in _open_error(toy)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_out_of_the_folder_is_rejected(toy, tmp_path):
    outside = tmp_path / "outside.onnx"
    (toy / "block.onnx").rename(outside)
    (toy / "block.onnx").symlink_to(outside)
    assert "resolves outside the shard folder" in _open_error(toy)


def test_missing_file_is_rejected(toy):
    (toy / "head.onnx").unlink()
    message = _open_error(toy)
    assert "head.onnx" in message and "missing" in message


def test_missing_hash_is_rejected(toy):
    _edit_manifest(toy, lambda d: d["shards"][0].update(sha256={}))
    assert "no sha256 recorded for 'embed.onnx'" in _open_error(toy)


def test_shape_mismatch_between_shards_is_rejected(toy):
    _edit_manifest(toy, lambda d: d["shards"][1]["inputs"][0].update(shape=[1, TOY_TOKENS, TOY_WIDTH + 1]))
    message = _open_error(toy)
    assert "shape mismatch" in message and "block" in message and str([1, TOY_TOKENS, TOY_WIDTH]) in message


def test_input_nobody_produces_is_rejected(toy):
    _edit_manifest(toy, lambda d: d["shards"][2]["inputs"][0].update(name="nowhere"))
    assert "'nowhere' is not produced by any earlier shard" in _open_error(toy)


def test_pixel_shape_must_match_preprocess_size(toy):
    _edit_manifest(toy, lambda d: d["preprocess"].update(size=[16, 16]))
    assert "does not match the preprocess size" in _open_error(toy)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("format", "something_else", "not an rk_siglip_ros shard manifest"),
    ("version", 3, "manifest version 3 is not supported"),
])
def test_wrong_format_or_version_is_rejected(toy, key, value, expected):
    _edit_manifest(toy, lambda d: d.update({key: value}))
    assert expected in _open_error(toy)


def test_rknn_files_without_a_toolkit_version_are_rejected(toy):
    def add_rknn(data):
        data["shards"][0]["rknn"] = "embed.rknn"
        data["toolchain"] = {}
    _edit_manifest(toy, add_rknn)
    assert "does not record the rknn_toolkit2 version" in _open_error(toy)


def test_no_shard_set_at_all(tmp_path):
    message = _open_error(tmp_path / "nothing")
    assert "no shard set" in message and "build_shards" in message


def test_the_backend_only_hashes_the_files_it_loads(toy):
    """A corrupt .rknn must not stop an onnxruntime user; a corrupt .onnx must."""
    (toy / "embed.rknn").write_bytes(b"corrupt")

    def add_rknn(data):
        data["shards"][0]["rknn"] = "embed.rknn"
        data["shards"][0]["sha256"]["embed.rknn"] = "0" * 64
        data["toolchain"] = {"rknn_toolkit2": "2.5.0"}
    _edit_manifest(toy, add_rknn)
    with pytest.raises(ManifestError, match="modified or corrupted"):
        load_manifest(toy)
    SiglipEncoder.open(toy, backend="onnxruntime").close()


def test_embedding_dim_must_match_the_pooled_output(toy):
    _edit_manifest(toy, lambda d: d["model"].update(embedding_dim=TOY_DIM + 1))
    message = _open_error(toy)
    assert f"embedding_dim is {TOY_DIM + 1}" in message and "'pooled'" in message


def test_non_float32_boundary_tensors_are_refused(toy):
    _edit_manifest(toy, lambda d: d["shards"][1]["outputs"][0].update(dtype="float16"))
    assert "dtype 'float16'" in _open_error(toy)
