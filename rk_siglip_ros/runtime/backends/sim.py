"""NPU timing simulation: no compute, just the time a shard would hold its core.

Each call sleeps for the time a timing profile (:mod:`rk_siglip_ros.runtime.timing`) predicts for the shard and
returns zeros of the declared output shapes. A runner loaded on a group of cores (the ``allcores`` mode: one context
with core mask 0-1-2) divides each op class by the profile's all-cores speedup for it (on RK3588 only conv-type work,
the dense class, splits; attention stays on one core). Sleeping releases the GIL like RKNNLite.inference does, so
the scheduler sees the same concurrency it would on the board: this is what lets the three-core schedules be
designed, tested and benchmarked off the board.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rk_siglip_ros.manifest import Manifest, ShardSpec
from rk_siglip_ros.runtime.backends.base import Backend, BackendError, Core, ShardRunner, core_indices
from rk_siglip_ros.runtime.timing import TimingProfile, load_timing_profile, predicted_ms


class SimBackend(Backend):
    name = "sim"
    file_kind = None

    def __init__(self, profile: str | Path | dict[str, Any] | TimingProfile | None = None,
                 time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise BackendError(f"time_scale must be positive, got {time_scale}")
        self.profile = load_timing_profile(profile)
        self.time_scale = time_scale

    def predicted_ms(self, manifest: Manifest, shard: ShardSpec, cores: int = 1) -> float:
        """Unscaled time the profile predicts for one call of ``shard`` on one core (or a group of ``cores``)."""
        return predicted_ms(self.profile, manifest, shard, cores)

    def estimated_cost(self, manifest: Manifest, shard: ShardSpec) -> float:
        return self.predicted_ms(manifest, shard)

    def load(self, manifest: Manifest, shard: ShardSpec, core: Core) -> ShardRunner:
        group = len(core_indices(core))
        return _SimRunner(shard, core, self.predicted_ms(manifest, shard, cores=group) * self.time_scale / 1000.0)


class _SimRunner(ShardRunner):
    def __init__(self, shard: ShardSpec, core: Core, seconds: float) -> None:
        super().__init__(shard, core)
        self.seconds = seconds
        # One read-only zero array per output, handed out on every call: allocating (and later freeing) a 3 MB token
        # tensor per call would add real host time to each simulated one (about 0.1 ms, inflated by a time_scale <
        # 1); read-only, so a consumer that wrote into it would fail loudly instead of corrupting later frames.
        self._zeros = {spec.name: np.zeros(spec.shape, dtype=np.float32) for spec in shard.outputs}
        for zeros in self._zeros.values():
            zeros.flags.writeable = False

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [spec.name for spec in self.shard.inputs if spec.name not in inputs]
        if missing:
            raise BackendError(f"shard {self.shard.name}: missing inputs {missing}")
        deadline = time.perf_counter() + self.seconds
        time.sleep(self.seconds)
        while time.perf_counter() < deadline:  # sleep may wake a little early on some kernels
            time.sleep(max(0.0, deadline - time.perf_counter()))
        return dict(self._zeros)
