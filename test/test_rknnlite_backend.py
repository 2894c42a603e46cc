"""The RKNN-Lite backend's own code (load, run, close, core masks, auto selection, error paths) on the test double of
rknn-toolkit-lite2 2.5.0 (test/doubles), which runs each .rknn's sibling .onnx with ONNX Runtime."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from rk_siglip_ros.manifest import load_manifest
from rk_siglip_ros.runtime.backends import BackendError, create_backend, resolve_backend_name
from rk_siglip_ros.runtime.encoder import SiglipEncoder
from rk_siglip_ros.runtime.scheduler import MODES

IMAGE = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def rknn_shards(shard_factory):
    return shard_factory(profile="pipeline3", formats=("onnx", "rknn"))


@pytest.fixture(scope="module")
def rknn_split_shards(shard_factory):
    """The split profile: only the split mode runs its parts on all cores at once."""
    return shard_factory(profile="split", formats=("onnx", "rknn"))


def masks(double) -> list[int]:
    return sorted(context.core_mask for context in double.LIVE)


def test_the_double_has_the_2_5_0_api(rknnlite_double):
    """Method names, parameters and defaults, and core-mask values as rknnlite/api/rknn_lite.py of the 2.5.0 wheel."""
    lite = rknnlite_double.RKNNLite
    expected = {
        "__init__": "(self, verbose=False, verbose_file=None)",
        "load_rknn": "(self, path, key_path=None)",
        "init_runtime": "(self, target=None, device_id=None, async_mode=False, core_mask=0)",
        "inference": "(self, inputs, data_type=None, data_format=None, inputs_pass_through=None, get_frame_id=False, "
                     "reuse_outputs=False)",
        "get_sdk_version": "(self)", "release": "(self)", "list_devices": "(self)",
        "list_support_target_platform": "(self, rknn_model=None)",
    }
    assert {name: str(inspect.signature(getattr(lite, name))) for name in expected} == expected
    assert (lite.NPU_CORE_AUTO, lite.NPU_CORE_0, lite.NPU_CORE_1, lite.NPU_CORE_2, lite.NPU_CORE_0_1,
            lite.NPU_CORE_0_1_2, lite.NPU_CORE_ALL) == (0, 1, 2, 4, 3, 7, 0xFFFF)


def test_auto_picks_rknnlite_where_it_imports_and_the_set_has_rknn_files(rknnlite_double, rknn_shards, shard_factory):
    assert resolve_backend_name("auto", load_manifest(rknn_shards)) == "rknnlite"
    assert resolve_backend_name("auto", load_manifest(shard_factory())) == "onnxruntime"  # no .rknn files


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_encodes_like_onnxruntime_with_the_right_core_masks(rknnlite_double, request, mode):
    lite = rknnlite_double.RKNNLite
    shards = request.getfixturevalue("rknn_split_shards" if mode == "split" else "rknn_shards")
    with SiglipEncoder.open(shards, backend="onnxruntime", mode="sequential") as cpu:
        reference = cpu.encode(IMAGE)
    with SiglipEncoder.open(shards, backend="auto", mode=mode) as npu:
        assert npu.backend.name == "rknnlite"
        vectors = npu.encode_batch([IMAGE] * 3)
        one_core_each = [lite.NPU_CORE_0, lite.NPU_CORE_1, lite.NPU_CORE_2]
        if mode == "split":  # every part on a context pinned to one core, every core serving parts
            assert set(masks(rknnlite_double)) == set(one_core_each)
        else:
            expected = {"sequential": one_core_each, "pipeline": one_core_each,
                        "replicas": sorted(one_core_each * 3), "allcores": [lite.NPU_CORE_0_1_2] * 3}[mode]
            assert masks(rknnlite_double) == expected
        assert "API: 2.5.0" in npu.backend.sdk_version
    assert rknnlite_double.LIVE == []  # close() released every context
    assert np.allclose(vectors @ reference, 1.0, atol=1e-5)


def test_core_masks_for_cores_and_groups(rknnlite_double):
    backend = create_backend("rknnlite")
    lite = rknnlite_double.RKNNLite
    assert [backend.core_mask(core) for core in (0, 1, 2, (0,), (0, 1), (2, 1, 0))] == [
        lite.NPU_CORE_0, lite.NPU_CORE_1, lite.NPU_CORE_2, lite.NPU_CORE_0, lite.NPU_CORE_0_1, lite.NPU_CORE_0_1_2]
    for impossible in (3, -1, (1, 2), (0, 3)):
        with pytest.raises(BackendError, match="RK3588 has NPU cores 0, 1, 2"):
            backend.core_mask(impossible)


def test_error_paths_release_the_context_and_say_what_to_do(rknnlite_double, rknn_shards, tmp_path):
    manifest = load_manifest(rknn_shards)
    backend = create_backend("rknnlite", manifest)
    shard = manifest.shards[0]
    with pytest.raises(BackendError, match="core 3 is not one of them"):
        backend.load(manifest, shard, 3)

    rknnlite_double.BOARD["librknnrt"] = "1.6.0 (9a7b5d24c@2023-12-13)"  # a board with an old runtime
    with pytest.raises(BackendError, match=r"built by rknn-toolkit2 2\.5\.0.*librknnrt is 1\.6\.0"):
        backend.load(manifest, shard, 0)
    assert rknnlite_double.LIVE == []  # the failed context was released
    rknnlite_double.BOARD["librknnrt"] = "2.5.0 (c0ffee@2025-01-01)"

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in (shard.rknn, shard.onnx):
        (broken / name).write_bytes((rknn_shards / name).read_bytes())
    (broken / "manifest.json").write_bytes((rknn_shards / "manifest.json").read_bytes())
    (broken / shard.rknn).write_bytes(b"not an rknn model")
    with pytest.raises(BackendError, match=r"init_runtime\(core 1\) failed"):
        backend.load(load_manifest(broken, verify=()), shard, 1)
    (broken / shard.rknn).unlink()
    with pytest.raises(BackendError, match=r"load_rknn\(.*\) failed.*rebuild the shard set"):
        backend.load(load_manifest(broken, verify=()), shard, 1)

    runner = backend.load(manifest, shard, 2)
    name = shard.inputs[0].name
    with pytest.raises(BackendError, match="RKNNLite.inference failed"):
        runner.run({name: np.zeros(7, np.float32)})  # wrong element count: the runtime refuses it
    runner.close()
    runner.close()  # idempotent
    with pytest.raises(BackendError, match="was released"):
        runner.run({name: np.zeros(shard.inputs[0].shape, np.float32)})


def test_the_double_feeds_like_the_runtime(rknnlite_double, rknn_shards):
    """data_format semantics the backend relies on: 4-D inputs are N,C,H,W for "nchw", N,H,W,C otherwise; lists need
    one entry per input; reuse_outputs hands out buffers the next call overwrites."""
    manifest = load_manifest(rknn_shards)
    shard = manifest.shards[0]
    context = rknnlite_double.RKNNLite()
    assert context.get_sdk_version() is None and context.inference(inputs=[]) is None  # before init_runtime
    assert context.load_rknn(str(manifest.path(shard, "rknn"))) == 0
    assert context.init_runtime(core_mask=5) == -1  # cores 0 and 2: no such mode
    assert context.init_runtime(core_mask=context.NPU_CORE_1) == 0
    pixels = np.random.default_rng(1).normal(size=shard.inputs[0].shape).astype(np.float32)
    as_exported = context.inference(inputs=[pixels], data_format="nchw")
    as_nhwc = context.inference(inputs=[pixels.transpose(0, 2, 3, 1)])
    np.testing.assert_array_equal(as_exported[0], as_nhwc[0])
    assert context.inference(inputs=[pixels], data_format=["nchw", "nchw"]) is None
    assert context.inference(inputs=[pixels], data_format="nc") is None
    assert context.inference(inputs=pixels, data_format="nchw") is None  # not a list
    first = context.inference(inputs=[pixels], data_format="nchw", reuse_outputs=True)[0]
    kept = first.copy()
    context.inference(inputs=[pixels * 0], data_format="nchw", reuse_outputs=True)
    assert not np.array_equal(first, kept)  # overwritten by the next call, as documented
    context.release()
    context.release()
