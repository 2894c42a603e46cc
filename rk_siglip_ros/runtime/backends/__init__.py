"""Backends run one shard on one core: ``onnxruntime`` (CPU), ``rknnlite`` (RK3588 board), ``sim`` (NPU timing).

Each backend module imports its runtime lazily, so importing this package never needs onnxruntime or
rknn-toolkit-lite2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rk_siglip_ros.manifest import Manifest
from rk_siglip_ros.runtime.backends.base import Backend, BackendError, ShardRunner

BACKENDS = ("auto", "onnxruntime", "rknnlite", "sim")
# Where the kernel exposes the board's device tree; containers that bind-mount it elsewhere (and tests) say where.
DEVICE_TREE = Path("/proc/device-tree")
DEVICE_TREE_ENV = "RK_SIGLIP_DEVICE_TREE"
# SoCs with the 3-core NPU this package targets (the RK3588S has the same NPU).
NPU_SOCS = ("rockchip,rk3588", "rockchip,rk3588s")

__all__ = ["BACKENDS", "Backend", "BackendError", "NpuUnavailableError", "ShardRunner", "create_backend",
           "npu_soc", "resolve_backend_name"]


class NpuUnavailableError(BackendError):
    """``auto`` on an RK3588 that cannot use its NPU: the message names what is missing and the explicit CPU choice."""


def npu_soc(device_tree: str | Path | None = None) -> str | None:
    """The NPU SoC this machine is (``rockchip,rk3588`` / ``rockchip,rk3588s``, from the device tree's
    ``compatible`` list), or None. ``device_tree``: the device-tree root, default $RK_SIGLIP_DEVICE_TREE or
    /proc/device-tree."""
    root = Path(device_tree or os.environ.get(DEVICE_TREE_ENV) or DEVICE_TREE)
    try:
        entries = (root / "compatible").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in entries:
        name = entry.decode("ascii", errors="replace").strip()
        if name in NPU_SOCS:
            return name
    return None


def resolve_backend_name(name: str, manifest: Manifest | None = None,
                         device_tree: str | Path | None = None) -> str:
    """``auto`` -> rknnlite where it imports and the shard set has .rknn files, else onnxruntime (CPU).

    Except on an RK3588 (its device tree says so; ``device_tree`` as :func:`npu_soc`): there the CPU is ten times
    slower than the NPU, so ``auto`` never falls back to it silently. Without a working RKNN-Lite runtime, or with a
    shard set that has no .rknn files, it raises :class:`NpuUnavailableError` naming what to install or build, and
    ``onnxruntime`` as the explicit choice for a CPU run on purpose."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    from rk_siglip_ros.runtime.backends.rknnlite import OFF_BOARD_HINT, import_rknnlite

    try:
        import_rknnlite()
        runtime_error = None
    except BackendError as error:
        runtime_error = error
    has_rknn = manifest is not None and manifest.has_files("rknn")
    if has_rknn and runtime_error is None:
        return "rknnlite"
    soc = npu_soc(device_tree)
    if soc is None:
        return "onnxruntime"
    cpu = "or set backend to onnxruntime to run on the CPU on purpose (about ten times slower than the NPU)"
    if runtime_error is not None:
        toolkit = manifest.toolchain.get("rknn_toolkit2", "<the toolkit version in manifest.json>") if manifest \
            else "<the toolkit version in manifest.json>"
        raise NpuUnavailableError(f"backend auto on this {soc} board: the NPU runtime is missing (rknnlite does not "
                                f"import: install rknn-toolkit-lite2, `pip install rknn-toolkit-lite2=={toolkit}`, "
                                f"with librknnrt.so in /usr/lib), {cpu}") from None
    if manifest is None:
        return "rknnlite"
    raise NpuUnavailableError(f"backend auto on this {soc} board: the shard set has no .rknn files (built with "
                            f"--formats onnx only?): rebuild it with build_shards --formats onnx,rknn, {cpu}; "
                            f"{OFF_BOARD_HINT.split(';')[0]}")


def create_backend(name: str, manifest: Manifest | None = None,
                   timing_profile: str | Path | dict[str, Any] | None = None, time_scale: float = 1.0,
                   threads: int | None = None) -> Backend:
    """A backend instance by name (``auto`` resolved against ``manifest``)."""
    name = resolve_backend_name(name, manifest)
    if name == "onnxruntime":
        from rk_siglip_ros.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(threads=threads)
    if name == "rknnlite":
        from rk_siglip_ros.runtime.backends.rknnlite import RknnLiteBackend

        return RknnLiteBackend()
    from rk_siglip_ros.runtime.backends.sim import SimBackend

    return SimBackend(timing_profile, time_scale=time_scale)
