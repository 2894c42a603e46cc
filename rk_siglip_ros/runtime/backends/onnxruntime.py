"""ONNX Runtime (CPU) backend: CI, laptops, robots without a Rockchip NPU.

One InferenceSession per (shard, core) worker. "Cores" are only worker slots here; the intra-op thread count is
sized so that the sessions that can run at once share the machine's CPUs instead of oversubscribing them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rk_siglip_ros.manifest import Manifest, ShardSpec
from rk_siglip_ros.runtime.backends.base import Backend, BackendError, Core, ShardRunner, declared_outputs


def session_options(threads: int) -> Any:
    """The onnxruntime.SessionOptions every ORT session of this package uses (the runtime's and the builder's)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle intra-op threads would spin-wait after each run and steal the CPUs from the next shard's session
    # (a chain of shards, or stages running side by side); measured no slower for a single session.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(path: str | Path, threads: int) -> Any:
    """A CPU onnxruntime.InferenceSession for ``path`` with :func:`session_options`; ORT's own errors propagate."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    file_kind = "onnx"

    def __init__(self, threads: int | None = None) -> None:
        try:
            import onnxruntime  # noqa: F401 - fail here, saying what to install, rather than at the first load
        except ImportError as error:  # pragma: no cover - onnxruntime is a runtime requirement
            raise BackendError(f"the onnxruntime backend needs the onnxruntime package ({error}); "
                               "pip install onnxruntime") from None
        self._fixed_threads = threads
        self._threads = threads or os.cpu_count() or 1

    def set_concurrency(self, workers: int) -> None:
        if self._fixed_threads is None:
            self._threads = max(1, (os.cpu_count() or 1) // max(1, workers))

    @property
    def threads(self) -> int:
        return self._threads

    def load(self, manifest: Manifest, shard: ShardSpec, core: Core) -> ShardRunner:
        path = manifest.path(shard, "onnx")
        try:
            session = create_session(path, self._threads)
        except Exception as error:  # noqa: BLE001 - ORT raises several unrelated types for a bad file
            raise BackendError(f"onnxruntime cannot load {path}: {error}") from None
        return _OrtRunner(shard, core, session)


class _OrtRunner(ShardRunner):
    def __init__(self, shard: ShardSpec, core: Core, session: object) -> None:
        super().__init__(shard, core)
        self._session = session
        self._input_names = [i.name for i in session.get_inputs()]
        self._output_names = [o.name for o in session.get_outputs()]
        declared = {spec.name for spec in shard.inputs}
        if set(self._input_names) != declared:
            raise BackendError(f"shard {shard.name}: the ONNX graph takes inputs {self._input_names}, the manifest "
                               f"declares {sorted(declared)}; the shard file does not match its manifest")
        _check_static_shapes(shard, session)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self._input_names}
        try:
            values = self._session.run(self._output_names, feed)
        except Exception as error:  # noqa: BLE001 - ORT's error types are plain Exceptions; name the shard
            raise BackendError(f"shard {self.shard.name} on worker {self.core}: onnxruntime failed: "
                               f"{type(error).__name__}: {' '.join(str(error).split())[:300]}") from error
        return declared_outputs(self.shard, dict(zip(self._output_names, values, strict=True)))

    def close(self) -> None:
        self._session = None


def _check_static_shapes(shard: ShardSpec, session: Any) -> None:
    """At load, not per frame: an ONNX input whose fixed dimensions differ from the manifest (e.g. a preprocess size
    edited without rebuilding) would fail every frame with onnxruntime's InvalidArgument."""
    graph_inputs = {node.name: node.shape for node in session.get_inputs()}
    for spec in shard.inputs:
        shape = graph_inputs[spec.name]
        fixed = len(shape) == len(spec.shape) and all(not isinstance(dim, int) or dim == want
                                                      for dim, want in zip(shape, spec.shape, strict=True))
        if not fixed:
            raise BackendError(f"shard {shard.name} input {spec.name!r}: the ONNX graph expects {list(shape)}, the "
                               f"manifest declares {list(spec.shape)} (for the first shard: the preprocess size); "
                               "the shard file does not match its manifest, rebuild the shard set")
