"""Fault injection: a backend that wraps a real one and makes chosen shard calls fail the way hardware does.

For tests, the fault benchmark and users who want to see how their robot's stack reacts before a board does it
for them. The wrapped runners are the real ones (ONNX Runtime, RKNN-Lite, sim); only the chosen calls are altered:

- ``raise``: the call raises :class:`InjectedFaultError` (an NPU driver error);
- ``nan``: the call returns its real outputs multiplied by NaN (an fp16 overflow, a bad core);
- ``shape``: the call returns its outputs with the last element cut off (a shard file that does not match);
- ``stuck``: the call blocks until :meth:`FaultInjectingBackend.release` (a hung NPU call).

Example::

    backend = FaultInjectingBackend(create_backend("onnxruntime"), "nan", cores={1}, rate=0.5, seed=0)
    encoder = SiglipEncoder(load_manifest(folder), backend, mode="replicas")
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection

import numpy as np

from rk_siglip_ros.manifest import Manifest, ShardSpec
from rk_siglip_ros.runtime.backends.base import Backend, Core, ShardRunner, core_indices

FAULT_KINDS = ("raise", "nan", "shape", "stuck")


class InjectedFaultError(RuntimeError):
    """The error a ``raise`` fault throws from a shard call."""


class FaultInjectingBackend(Backend):
    """``inner`` with faults of ``kind`` on shard ``shard`` (index; -1 = the last) on ``cores`` (None = all), each
    call failing with probability ``rate`` (seeded). ``close_error``: every runner's close() raises after releasing
    the real runner (a driver that errors on release)."""

    def __init__(self, inner: Backend, kind: str, *, shard: int = -1, cores: Collection[int] | None = None,
                 rate: float = 1.0, seed: int = 0, close_error: bool = False) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        self.inner = inner
        self.name = inner.name
        self.file_kind = inner.file_kind
        self.kind = kind
        self.shard = shard
        self.cores = None if cores is None else frozenset(cores)
        self.rate = rate
        self.close_error = close_error
        self.injected = 0  # calls altered so far
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._released = threading.Event()

    def load(self, manifest: Manifest, shard: ShardSpec, core: Core) -> ShardRunner:
        index = manifest.shards.index(shard)
        target = self.shard % len(manifest.shards)
        spans = set(core_indices(core))  # allcores: one context over several cores
        faulty = index == target and (self.cores is None or bool(spans & set(self.cores)))
        return _FaultyRunner(self.inner.load(manifest, shard, core), self, faulty)

    def estimated_cost(self, manifest: Manifest, shard: ShardSpec) -> float:
        return self.inner.estimated_cost(manifest, shard)

    def set_concurrency(self, workers: int) -> None:
        self.inner.set_concurrency(workers)

    def release(self) -> None:
        """Let every ``stuck`` call (now and later) return, so a test leaves no blocked thread behind."""
        self._released.set()

    def _strike(self) -> bool:
        with self._lock:
            hit = self._random.random() < self.rate
            self.injected += hit
            return hit


class _FaultyRunner(ShardRunner):
    def __init__(self, real: ShardRunner, backend: FaultInjectingBackend, faulty: bool) -> None:
        super().__init__(real.shard, real.core)
        self._real = real
        self._backend = backend
        self._faulty = faulty

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not (self._faulty and self._backend._strike()):
            return self._real.run(inputs)
        kind = self._backend.kind
        if kind == "raise":
            raise InjectedFaultError(f"injected fault in shard {self.shard.name} on core {self.core}")
        if kind == "stuck":
            self._backend._released.wait()
        outputs = self._real.run(inputs)
        if kind == "nan":
            return {name: value * np.float32("nan") for name, value in outputs.items()}
        if kind == "shape":
            return {name: value.reshape(-1)[:-1] for name, value in outputs.items()}
        return outputs

    def close(self) -> None:
        self._real.close()
        if self._backend.close_error:
            raise InjectedFaultError(f"injected close() failure for shard {self.shard.name} on core {self.core}")
