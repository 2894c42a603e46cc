"""NPU timing simulation: no compute, just the time a shard would hold its core.

Each call sleeps for the time a timing profile (rk_siglip_ros/timing_profiles/*.json) predicts for the shard and
returns zeros of the declared output shapes. Sleeping releases the GIL like RKNNLite.inference does, so the scheduler
sees the same concurrency it would on the board: this is what lets the three-core schedules be designed, tested and
benchmarked off the board.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest, ShardSpec
from .base import Backend, BackendError, ShardRunner

DEFAULT_PROFILE = "rk3588-fp16"


@dataclass(frozen=True)
class TimingProfile:
    name: str
    per_call_ms: float
    dense_ms_per_gmac: float
    attention_ms_per_gmac: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingProfile:
        try:
            dense = float(data["dense_ms_per_gmac"])
            attention = {str(k): float(v) for k, v in dict(data.get("attention_ms_per_gmac", {})).items()}
            return cls(name=str(data.get("name", "custom")), per_call_ms=float(data["per_call_ms"]),
                       dense_ms_per_gmac=dense,
                       attention_ms_per_gmac={"fused": attention.get("fused", dense),
                                              "tiled": attention.get("tiled", attention.get("fused", dense))})
        except (KeyError, TypeError, ValueError) as error:
            raise BackendError(f"timing profile needs per_call_ms and dense_ms_per_gmac numbers ({error})") from None

    def shard_ms(self, dense_gmac: float, attention_gmac: float, tiled: bool) -> float:
        rate = self.attention_ms_per_gmac["tiled" if tiled else "fused"]
        return self.per_call_ms + self.dense_ms_per_gmac * dense_gmac + rate * attention_gmac


def available_profiles() -> list[str]:
    folder = resources.files("rk_siglip_ros") / "timing_profiles"
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".json"))


def load_timing_profile(profile: str | Path | dict[str, Any] | TimingProfile | None = None) -> TimingProfile:
    """A profile by packaged name (default rk3588-fp16), JSON file path, dict, or TimingProfile."""
    if isinstance(profile, TimingProfile):
        return profile
    if isinstance(profile, dict):
        return TimingProfile.from_dict(profile)
    name = str(profile or DEFAULT_PROFILE)
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return TimingProfile.from_dict(json.loads(path.read_text()))
    packaged = resources.files("rk_siglip_ros") / "timing_profiles" / f"{name}.json"
    if not packaged.is_file():
        raise BackendError(f"no timing profile {name!r}: not a .json file, and not one of the packaged profiles "
                           f"{available_profiles()}")
    return TimingProfile.from_dict(json.loads(packaged.read_text()))


def attention_blocks(shard: ShardSpec) -> int:
    """How many attention blocks a shard holds: from the builder's block list, else every listed layer is assumed to
    bring its attention (an upper bound: a cut can split a layer)."""
    if shard.blocks:
        return sum(1 for label in shard.blocks if label.startswith("attention"))
    return len(shard.layers)


def attention_is_tiled(manifest: Manifest) -> bool:
    """Attention the builder tiled (behind a fusion barrier) runs as many small unfused ops: the slow rate."""
    return bool(manifest.build.get("tile"))


def shard_gmacs(manifest: Manifest, shard: ShardSpec) -> tuple[float, float]:
    """(dense GMAC, attention-score GMAC) of a shard, from its recorded MACs and the model's token count and width."""
    if shard.macs <= 0:
        raise BackendError(f"shard {shard.name} records no MAC count; the sim backend needs the builder's per-shard "
                           "`macs` (rebuild the shard set)")
    tokens, width = manifest.model.num_tokens, manifest.model.hidden_size
    attention = min(float(shard.macs), attention_blocks(shard) * 2.0 * tokens * tokens * width)
    return (shard.macs - attention) / 1e9, attention / 1e9


class SimBackend(Backend):
    name = "sim"
    file_kind = None

    def __init__(self, profile: str | Path | dict[str, Any] | TimingProfile | None = None,
                 time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise BackendError(f"time_scale must be positive, got {time_scale}")
        self.profile = load_timing_profile(profile)
        self.time_scale = time_scale

    def predicted_ms(self, manifest: Manifest, shard: ShardSpec) -> float:
        """Unscaled time the profile predicts for one call of ``shard`` on one core."""
        dense, attention = shard_gmacs(manifest, shard)
        return self.profile.shard_ms(dense, attention, attention_is_tiled(manifest))

    def estimated_cost(self, manifest: Manifest, shard: ShardSpec) -> float:
        return self.predicted_ms(manifest, shard)

    def load(self, manifest: Manifest, shard: ShardSpec, core: int) -> ShardRunner:
        return _SimRunner(shard, core, self.predicted_ms(manifest, shard) * self.time_scale / 1000.0)


class _SimRunner(ShardRunner):
    def __init__(self, shard: ShardSpec, core: int, seconds: float) -> None:
        super().__init__(shard, core)
        self.seconds = seconds
        self._zeros = {spec.name: np.zeros(spec.shape, dtype=np.float32) for spec in shard.outputs}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [spec.name for spec in self.shard.inputs if spec.name not in inputs]
        if missing:
            raise BackendError(f"shard {self.shard.name}: missing inputs {missing}")
        deadline = time.perf_counter() + self.seconds
        time.sleep(self.seconds)
        while time.perf_counter() < deadline:  # sleep may wake a little early on some kernels
            time.sleep(max(0.0, deadline - time.perf_counter()))
        return {name: zeros.copy() for name, zeros in self._zeros.items()}
