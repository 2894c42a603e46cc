"""`backend: auto` never slows a robot down silently: on an RK3588 (its device tree says so) without a working
RKNN-Lite runtime, or with a shard set that has no .rknn files, it refuses with one line that names what is missing
and the explicit CPU choice; elsewhere it picks the CPU as before. Device trees are written here the way the kernel
exposes them (/proc/device-tree/compatible: NUL-separated strings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rk_siglip_ros.manifest import load_manifest
from rk_siglip_ros.runtime.backends import DEVICE_TREE_ENV, NpuUnavailableError, npu_soc, resolve_backend_name
from rk_siglip_ros.runtime.encoder import SiglipEncoder

# Real compatible lists: a Radxa ROCK 5B (RK3588), an Orange Pi 5 (RK3588S), a Raspberry Pi 4 (no NPU).
ROCK_5B = ("radxa,rock-5b", "rockchip,rk3588")
ORANGE_PI_5 = ("rockchip,rk3588s-orangepi-5", "rockchip,rk3588s")
RASPBERRY_PI_4 = ("raspberrypi,4-model-b", "brcm,bcm2711")


def device_tree(root: Path, compatible: tuple[str, ...]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "compatible").write_bytes(b"".join(name.encode() + b"\0" for name in compatible))
    return root


@pytest.fixture()
def onnx_shards(shard_factory) -> Path:
    return shard_factory()


def test_npu_soc_reads_the_compatible_list(tmp_path: Path) -> None:
    assert npu_soc(device_tree(tmp_path / "rock5b", ROCK_5B)) == "rockchip,rk3588"
    assert npu_soc(device_tree(tmp_path / "opi5", ORANGE_PI_5)) == "rockchip,rk3588s"
    assert npu_soc(device_tree(tmp_path / "rpi4", RASPBERRY_PI_4)) is None
    assert npu_soc(tmp_path / "absent") is None  # not Linux, or a container without /proc/device-tree


def test_auto_on_an_rk3588_without_rknnlite_refuses_naming_the_package(tmp_path: Path, onnx_shards: Path) -> None:
    pytest.importorskip("onnxruntime")
    try:
        import rknnlite  # noqa: F401
        pytest.skip("rknn-toolkit-lite2 imports here (a board): the missing-runtime case cannot be shown")
    except ImportError:
        pass
    board = device_tree(tmp_path / "rock5b", ROCK_5B)
    with pytest.raises(NpuUnavailableError) as refused:
        resolve_backend_name("auto", load_manifest(onnx_shards), device_tree=board)
    message = str(refused.value)
    assert "rockchip,rk3588 board" in message and "rknn-toolkit-lite2" in message
    assert "backend to onnxruntime to run on the CPU on purpose" in message
    assert "\n" not in message
    # The explicit CPU choice still works on the board; off the board auto is the CPU, as before.
    assert resolve_backend_name("onnxruntime", load_manifest(onnx_shards), device_tree=board) == "onnxruntime"
    laptop = device_tree(tmp_path / "rpi4", RASPBERRY_PI_4)
    assert resolve_backend_name("auto", load_manifest(onnx_shards), device_tree=laptop) == "onnxruntime"
    assert resolve_backend_name("auto", load_manifest(onnx_shards), device_tree=tmp_path / "absent") == "onnxruntime"


def test_the_encoder_refuses_through_the_environments_device_tree(tmp_path: Path, onnx_shards: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What the node and the CLIs go through: SiglipEncoder.open(backend="auto") on a board named by
    RK_SIGLIP_DEVICE_TREE (where a container mounts the host's device tree)."""
    monkeypatch.setenv(DEVICE_TREE_ENV, str(device_tree(tmp_path / "opi5", ORANGE_PI_5)))
    with pytest.raises(NpuUnavailableError, match="rockchip,rk3588s board: the NPU runtime is missing"):
        SiglipEncoder.open(onnx_shards, backend="auto", mode="sequential")
    with SiglipEncoder.open(onnx_shards, backend="onnxruntime", mode="sequential") as cpu:
        assert np.isfinite(cpu.encode(np.zeros((32, 32, 3), np.uint8))).all()


def test_auto_on_an_rk3588_with_the_runtime_needs_rknn_files(rknnlite_double, tmp_path: Path,
                                                             onnx_shards: Path) -> None:
    board = device_tree(tmp_path / "rock5b", ROCK_5B)
    with pytest.raises(NpuUnavailableError, match=r"no \.rknn files .*--formats onnx,rknn"):
        resolve_backend_name("auto", load_manifest(onnx_shards), device_tree=board)
