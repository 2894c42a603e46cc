"""Every command-line tool given a shard set whose last shard (and text tower) outputs NaN: the failure is one line
with exit status 1 — an explained runtime failure, not a bug report — and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from test_bag_cli import write_bag
from test_search_bag import write_embedding_bag

from rk_siglip_ros.cli.bench import main as bench
from rk_siglip_ros.cli.build_shards import main as build_shards
from rk_siglip_ros.cli.encode_bag import main as encode_bag
from rk_siglip_ros.cli.encode_images import main as encode_images
from rk_siglip_ros.cli.encode_text import main as encode_text
from rk_siglip_ros.cli.search_bag import main as search_bag
from rk_siglip_ros.cli.selfcheck import main as selfcheck
from rk_siglip_ros.errors import EXIT_FAILED
from rk_siglip_ros.manifest import load_manifest, record_hashes, save_manifest


def poison_outputs(path: Path) -> None:
    """Add NaN to every output of an ONNX graph (the graph still loads and runs; only its numbers are wrong)."""
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "poison_nan"))
    for output in model.graph.output:
        clean = f"{output.name}_before_poison"
        for node in model.graph.node:
            node.output[:] = [clean if name == output.name else name for name in node.output]
        model.graph.node.append(helper.make_node("Add", [clean, "poison_nan"], [output.name]))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def nan_shards(tiny_text_shards, tmp_path_factory) -> Path:
    """The tiny checkpoint's shard set (with a text tower), its last vision shard and its text tower poisoned, the
    manifest's hashes updated to match: a shard set every file check accepts."""
    folder = tmp_path_factory.mktemp("nan") / "set"
    shutil.copytree(tiny_text_shards, folder)
    manifest = load_manifest(folder, verify=())
    poison_outputs(folder / manifest.shards[-1].onnx)
    poison_outputs(folder / manifest.text.onnx)
    record_hashes(manifest, folder)
    save_manifest(manifest, folder)
    return folder


def assert_one_line_failure(status: int, stderr: str, prog: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(f"{prog}: note")]
    assert status == EXIT_FAILED, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: ") and "Traceback" not in stderr and "bug" not in stderr
    assert "not finite" in lines[0], lines[0]


def test_encode_images(nan_shards, tmp_path, capsys):
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((24, 32, 3), 120, np.uint8))
    out = tmp_path / "emb.npy"
    status = encode_images(["--shards", str(nan_shards), "--backend", "onnxruntime", "--out", str(out), str(image)])
    assert_one_line_failure(status, capsys.readouterr().err, "encode_images")
    assert not out.exists()


def test_encode_bag(nan_shards, tmp_path, capsys):
    write_bag(tmp_path / "in")
    status = encode_bag([str(tmp_path / "in"), str(tmp_path / "out"), "--shards", str(nan_shards), "--backend",
                         "onnxruntime", "--no-progress"])
    assert_one_line_failure(status, capsys.readouterr().err, "encode_bag")
    assert not (tmp_path / "out").exists()


def test_encode_text(nan_shards, tmp_path, capsys):
    out = tmp_path / "text.npy"
    status = encode_text(["--shards", str(nan_shards), "--out", str(out), "a red door"])
    assert_one_line_failure(status, capsys.readouterr().err, "encode_text")
    assert not out.exists()


def test_search_bag(nan_shards, tmp_path, capsys):
    manifest = load_manifest(nan_shards, verify=())
    write_embedding_bag(tmp_path / "rec", manifest.model.embedding_dim)
    status = search_bag([str(tmp_path / "rec"), "a red door", "--shards", str(nan_shards),
                         "--sheet", str(tmp_path / "hits.png")])
    assert_one_line_failure(status, capsys.readouterr().err, "search_bag")
    assert not (tmp_path / "hits.png").exists()


def test_bench(nan_shards, tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = bench(["--shards", str(nan_shards), "--backend", "onnxruntime", "--modes", "sequential", "--frames", "2",
                    "--warmup", "1", "--image-size", "32x24", "--json", str(out)])
    assert_one_line_failure(status, capsys.readouterr().err, "bench")
    assert not out.exists()


def test_selfcheck(nan_shards, tmp_path, capsys):
    out = tmp_path / "selfcheck"
    status = selfcheck(["--shards", str(nan_shards), "--backend", "onnxruntime", "--modes", "sequential",
                        "--frames", "2", "--call-frames", "1", "--image-size", "32x24", "--out", str(out), "--quiet"])
    assert_one_line_failure(status, capsys.readouterr().err, "selfcheck")
    assert not any(out.glob("*.yaml")) if out.exists() else True


def test_build_shards_of_a_checkpoint_that_outputs_nan(tiny_siglip_checkpoint, tmp_path, capsys):
    """A checkpoint with a NaN weight: verification finds the shard chain not finite and the build stops."""
    from safetensors.numpy import load_file, save_file

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_siglip_checkpoint, checkpoint)
    weights = load_file(str(checkpoint / "model.safetensors"))
    name = next(key for key in weights if key.startswith("vision_model.post_layernorm.weight"))
    weights[name] = np.full_like(weights[name], np.nan)
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    assert json.loads((checkpoint / "config.json").read_text())
    out = tmp_path / "shards"
    status = build_shards(["--model", str(checkpoint), "--out", str(out), "--formats", "onnx", "--quiet"])
    assert_one_line_failure(status, capsys.readouterr().err, "build_shards")
    assert not (out / "manifest.json").exists()
