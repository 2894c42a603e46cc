"""Backends run one shard on one core: ``onnxruntime`` (CPU), ``rknnlite`` (RK3588 board), ``sim`` (NPU timing).

Each backend module imports its runtime lazily, so importing this package never needs onnxruntime or
rknn-toolkit-lite2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rk_siglip_ros.manifest import Manifest
from rk_siglip_ros.runtime.backends.base import Backend, BackendError, ShardRunner

BACKENDS = ("auto", "onnxruntime", "rknnlite", "sim")

__all__ = ["BACKENDS", "Backend", "BackendError", "ShardRunner", "create_backend", "resolve_backend_name"]


def resolve_backend_name(name: str, manifest: Manifest | None = None) -> str:
    """``auto`` -> rknnlite where it imports and the shard set has .rknn files, else onnxruntime."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    from rk_siglip_ros.runtime.backends.rknnlite import rknnlite_available

    if manifest is not None and manifest.has_files("rknn") and rknnlite_available():
        return "rknnlite"
    return "onnxruntime"


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
