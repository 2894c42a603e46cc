"""Backends: ONNX Runtime session checks, the off-board RKNN-Lite error, auto selection, the sim's timing profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
from npu_geometry import C, T, all_blocks, siglip_b16_manifest
from test_manifest import write_toy_shards

from rk_siglip_ros.manifest import ShardSpec, TensorSpec, load_manifest
from rk_siglip_ros.runtime.backends import BackendError, create_backend, resolve_backend_name
from rk_siglip_ros.runtime.backends.rknnlite import check_runtime_version, rknnlite_available, runtime_version
from rk_siglip_ros.runtime.backends.sim import SimBackend
from rk_siglip_ros.runtime.encoder import SiglipEncoder
from rk_siglip_ros.runtime.timing import TimingProfileError, available_profiles, load_timing_profile, shard_gmacs

needs_board = pytest.mark.skipif(not rknnlite_available(), reason="needs an RK3588 board with rknn-toolkit-lite2")


def test_auto_picks_onnxruntime_off_the_board(tmp_path):
    manifest = load_manifest(write_toy_shards(tmp_path / "toy"))
    if rknnlite_available():
        pytest.skip("rknn-toolkit-lite2 is installed: this is a board")
    assert resolve_backend_name("auto", manifest) == "onnxruntime"


@pytest.mark.skipif(rknnlite_available(), reason="rknn-toolkit-lite2 is installed here")
def test_rknnlite_off_the_board_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="needs an RK3588 board with rknn-toolkit-lite2"):
        create_backend("rknnlite")
    folder = write_toy_shards(tmp_path / "toy")
    with pytest.raises(BackendError, match="--backend onnxruntime"):
        SiglipEncoder.open(folder, backend="rknnlite")


def board_shard_set(shard_factory):
    """A shard set with .rknn files for the on-board test: $RK_SIGLIP_BOARD_SHARDS (built elsewhere), else built
    here, which needs the builder's stack; a board with only rknn-toolkit-lite2 skips with what to do."""
    import importlib.util
    import os

    given = os.environ.get("RK_SIGLIP_BOARD_SHARDS")
    if given:
        return given
    missing = [name for name in ("torch", "transformers", "rknn") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"building .rknn shards needs {', '.join(missing)} (not on this board); build a random:tiny set "
                    "on a workstation and set RK_SIGLIP_BOARD_SHARDS to its folder")
    return shard_factory(formats=("onnx", "rknn"))


@needs_board
def test_rknnlite_on_the_board(shard_factory):
    folder = board_shard_set(shard_factory)
    image = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    with SiglipEncoder.open(folder, backend="onnxruntime") as cpu:
        reference = cpu.encode(image)
    for mode in ("pipeline", "allcores"):
        with SiglipEncoder.open(folder, backend="rknnlite", mode=mode) as npu:
            assert float(reference @ npu.encode(image)) >= 0.999, mode


def test_runtime_version_parsing_and_check():
    text = "API: 2.3.2 (429f97ae6b@2025-04-09T09:09:27)\nDRV: rknnrt: 2.3.0 (c949ad889d@2024-11-07T11:35:33)"
    assert runtime_version(text) == (2, 3, 2)
    assert runtime_version("librknnrt version: 1.6.0 (9a7b5d24c@2023-12-13)") == (1, 6, 0)
    check_runtime_version("librknnrt version: 2.5.0", "2.5.0", "s0.rknn")
    with pytest.raises(BackendError, match=r"built by rknn-toolkit2 2\.5\.0.*librknnrt is 1\.6\.0"):
        check_runtime_version("librknnrt version: 1.6.0 (abc)", "2.5.0", "s0.rknn")


def test_onnxruntime_rejects_a_graph_that_does_not_match_its_manifest(tmp_path):
    folder = write_toy_shards(tmp_path / "toy")
    other = write_toy_shards(tmp_path / "other", head=False)
    (folder / "head.onnx").write_bytes((other / "block.onnx").read_bytes())  # wrong graph, re-hashed below
    from rk_siglip_ros.manifest import record_hashes, save_manifest
    manifest = load_manifest(folder, verify=())
    record_hashes(manifest, folder)
    save_manifest(manifest, folder)
    with pytest.raises(BackendError, match="does not match its manifest"):
        SiglipEncoder.open(folder, backend="onnxruntime")


def test_onnxruntime_threads_follow_the_number_of_workers(tmp_path):
    folder = write_toy_shards(tmp_path / "toy")
    with SiglipEncoder.open(folder, backend="onnxruntime", mode="replicas") as replicas:
        assert replicas.backend.threads == max(1, (__import__("os").cpu_count() or 1) // 3)
    with SiglipEncoder.open(folder, backend="onnxruntime", mode="sequential", threads=1) as fixed:
        assert fixed.backend.threads == 1



def test_ort_sessions_share_one_set_of_options(tmp_path):
    """The runtime's sessions and the builder's verification sessions come from the same helper: no spin-waiting."""
    from rk_siglip_ros.runtime.backends.onnxruntime import create_session

    folder = write_toy_shards(tmp_path / "toy")
    with SiglipEncoder.open(folder, backend="onnxruntime", mode="sequential", threads=1) as encoder:
        runner_options = encoder._runners[(0, 0)]._session.get_session_options()
    manifest = load_manifest(folder, verify=())
    helper_options = create_session(manifest.path(manifest.shards[0], "onnx"), 2).get_session_options()
    for options, threads in ((runner_options, 1), (helper_options, 2)):
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.intra_op_num_threads == threads


def _four_d_and_three_d_graph(path, rng) -> None:
    """y = flatten(x) @ w + mean(t, axis=1): a (1, 8, 8, 3) input (NHWC, like an NHWC manifest's pixels) and a
    (1, 4, 5) input (like the token stream of later shards)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = rng.normal(size=(8 * 8 * 3, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["xw"]),
         helper.make_node("ReduceMean", ["t"], ["tm"], axes=[1], keepdims=0),
         helper.make_node("Add", ["xw", "tm"], ["y"])],
        "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3]),
                  helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([1, -1], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def simulate_mixed_graph(tmp_path):
    """The 4-D + 3-D input graph on the real rknn-toolkit2 simulator, fed as exported ("nchw") and as NHWC (None).
    Returns the inputs, ORT's output and the two simulator outputs."""
    from rk_siglip_ros.runtime.backends.onnxruntime import create_session

    rknn_api = pytest.importorskip("rknn.api", reason="rknn-toolkit2 (the x86 simulator) is not installed")
    rng = np.random.default_rng(0)
    _four_d_and_three_d_graph(tmp_path / "mixed.onnx", rng)
    x = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    t = rng.normal(size=(1, 4, 5)).astype(np.float32)
    expected = create_session(tmp_path / "mixed.onnx", 1).run(None, {"x": x, "t": t})[0]
    rknn = rknn_api.RKNN(verbose=False)
    try:
        rknn.config(target_platform="rk3588")
        assert rknn.load_onnx(str(tmp_path / "mixed.onnx")) == 0
        assert rknn.build(do_quantization=False) == 0
        assert rknn.init_runtime() == 0
        as_exported = rknn.inference(inputs=[x, t], data_format="nchw")
        # Without "nchw" the runtime takes a 4-D array as N, H, W, C of the graph's N, C, H, W and transposes it.
        as_nhwc = rknn.inference(inputs=[x.transpose(0, 2, 3, 1), t], data_format=None)
    finally:
        rknn.release()
    return x, t, expected, as_exported, as_nhwc


def test_rknn_data_format_feeds_4d_inputs_as_exported(tmp_path):
    """RKNN reads an ONNX graph's 4-D dims as NCHW, so "nchw" (= as exported) is right for an NHWC graph too; the
    choice follows the inputs' rank, not a name. Checked on the real rknn-toolkit2 simulator against ORT."""
    from rk_siglip_ros.runtime.backends.rknnlite import input_data_format

    pixels_nchw = ShardSpec("s0", [TensorSpec("pixel_values", (1, 3, 8, 8))], [TensorSpec("h0", (1, 4, 5))])
    tokens = ShardSpec("s1", [TensorSpec("h0", (1, 4, 5))], [TensorSpec("h1", (1, 4, 5))])
    mixed = ShardSpec("mixed", [TensorSpec("x", (1, 8, 8, 3)), TensorSpec("t", (1, 4, 5))],
                      [TensorSpec("y", (1, 5))])
    assert [input_data_format(s) for s in (pixels_nchw, tokens, mixed)] == ["nchw", None, "nchw"]
    _, _, expected, as_exported, as_nhwc = simulate_mixed_graph(tmp_path)
    for outputs in (as_exported, as_nhwc):
        np.testing.assert_allclose(np.asarray(outputs[0]).reshape(expected.shape), expected, atol=2e-2, rtol=1e-2)


def test_the_rknnlite_double_reads_data_format_like_the_simulator(tmp_path, rknnlite_double):
    """The test double (test/doubles) must agree with the real rknn-toolkit2 simulator on both feeds above."""
    x, t, expected, _, _ = simulate_mixed_graph(tmp_path)
    (tmp_path / "mixed.rknn").write_bytes(rknnlite_double.RKNN_MAGIC + bytes(12))  # the double runs mixed.onnx
    context = rknnlite_double.RKNNLite()
    assert context.load_rknn(str(tmp_path / "mixed.rknn")) == 0 and context.init_runtime() == 0
    try:
        as_exported = context.inference(inputs=[x, t], data_format="nchw")
        as_nhwc = context.inference(inputs=[x.transpose(0, 2, 3, 1), t], data_format=None)
    finally:
        context.release()
    np.testing.assert_allclose(as_exported[0], expected, atol=1e-5)
    np.testing.assert_allclose(as_nhwc[0], expected, atol=1e-5)

# ------------------------------------------------------------------------------------------------- timing model

def test_packaged_profile_reproduces_its_anchors():
    """The rk3588-fp16 profile must reproduce the published numbers it was derived from (see its derivation)."""
    assert "rk3588-fp16" in available_profiles()
    sim = SimBackend("rk3588-fp16")
    whole = siglip_b16_manifest("whole", [all_blocks(head=False)])  # SmolVLM-256M's encoder: no head
    assert sim.predicted_ms(whole, whole.shards[0]) == pytest.approx(842, rel=0.02)
    seed = siglip_b16_manifest("seed", [[label] for label in all_blocks(head=True)], tile=32)
    for shard in seed.shards:
        milliseconds = sim.predicted_ms(seed, shard)
        if shard.blocks[0].startswith("attention"):
            assert 107 <= milliseconds <= 131, (shard.blocks, milliseconds)
        elif shard.blocks[0].startswith("mlp"):
            assert 45 <= milliseconds <= 67, (shard.blocks, milliseconds)
    dense, attention = shard_gmacs(seed, seed.shards[1])
    assert attention == pytest.approx(2 * T * T * C / 1e9)
    assert dense == pytest.approx(4 * T * C * C / 1e9)


def test_profile_file_states_its_derivation():
    from importlib import resources
    data = json.loads((resources.files("rk_siglip_ros.runtime") / "timing_profiles" / "rk3588-fp16.json").read_text())
    assert "842" in " ".join(data["derivation"]) and data["sources"]


def test_profiles_from_dict_and_file(tmp_path):
    path = tmp_path / "fast.json"
    path.write_text(json.dumps({"name": "fast", "per_call_ms": 1.0, "dense_ms_per_gmac": 2.0}))
    assert load_timing_profile(path).shard_ms(1.0, 0.0, tiled=False) == pytest.approx(3.0)
    assert load_timing_profile({"per_call_ms": 0, "dense_ms_per_gmac": 1}).attention_ms_per_gmac["tiled"] == 1.0
    with pytest.raises(TimingProfileError, match="no timing profile 'nope'"):
        load_timing_profile("nope")
    with pytest.raises(TimingProfileError, match="per_call_ms"):
        load_timing_profile({"dense_ms_per_gmac": 1})


def test_sim_returns_zeros_of_the_declared_shapes(shard_factory):
    folder = shard_factory(profile="pipeline3")
    with SiglipEncoder.open(folder, backend="sim", time_scale=0.01, trace=True) as encoder:
        result = encoder.submit(np.zeros((10, 10, 3), np.uint8), tokens=True).result()
        events = list(encoder.scheduler.trace)
    assert result.tokens.shape == (encoder.manifest.model.num_tokens, encoder.manifest.model.hidden_size)
    assert not result.tokens.any()
    assert [e.core for e in events] == [0, 1, 2]
