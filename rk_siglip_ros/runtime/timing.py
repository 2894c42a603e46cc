"""The NPU timing model: how long a shard holds an RK3588 NPU core (or a group of cores), from its MACs.

time(shard) = per call + dense rate x dense GMAC + attention rate x attention-score GMAC, with the rates of a timing
profile (``timing_profiles/*.json`` beside this module, or one ``selfcheck`` fitted on a board). The sim backend
sleeps these times; ``bench``, ``selfcheck`` and the profile fit predict with them. numpy-free and ROS-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rk_siglip_ros.errors import UserError
from rk_siglip_ros.manifest import Manifest, ShardSpec


class TimingProfileError(UserError):
    """A timing profile that cannot be used (unknown name, missing numbers) or a shard set the model cannot time."""


# The conservative profile is the default: it was fitted to a measurement of this very encoder with a stated toolkit,
# runtime, driver and NPU clock (see its derivation); rk3588-fp16 rests on a vendor figure whose conditions are not
# stated. Benchmarks report both side by side.
DEFAULT_PROFILE = "rk3588-fp16-rk1"
OP_CLASSES = ("dense", "attention")


@dataclass(frozen=True)
class TimingProfile:
    """time(shard) = per_call + dense rate x dense GMAC + attention rate x attention-score GMAC, on one core.

    On a group of n cores (one context spanning them), each op class runs ``all_cores_speedup[class]`` times faster
    for the whole ``all_cores`` group, and proportionally less for a smaller group: 1 + (s - 1)(n - 1)/(N - 1).
    """

    name: str
    per_call_ms: float
    dense_ms_per_gmac: float
    attention_ms_per_gmac: dict[str, float] = field(default_factory=dict)
    all_cores: int = 3
    all_cores_speedup: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingProfile:
        try:
            dense = float(data["dense_ms_per_gmac"])
            attention = {str(k): float(v) for k, v in dict(data.get("attention_ms_per_gmac", {})).items()}
            split = dict(data.get("all_cores", {}))
            speedup = {str(k): float(v) for k, v in dict(split.get("speedup", {})).items()}
            unknown = sorted(set(speedup) - set(OP_CLASSES))
            if unknown or any(v <= 0 for v in speedup.values()):
                raise ValueError(f"all_cores.speedup takes positive numbers for {', '.join(OP_CLASSES)}, got "
                                 f"{split.get('speedup')}")
            return cls(name=str(data.get("name", "custom")), per_call_ms=float(data["per_call_ms"]),
                       dense_ms_per_gmac=dense,
                       attention_ms_per_gmac={"fused": attention.get("fused", dense),
                                              "tiled": attention.get("tiled", attention.get("fused", dense))},
                       all_cores=int(split.get("cores", 3)),
                       all_cores_speedup={c: speedup.get(c, 1.0) for c in OP_CLASSES})
        except (KeyError, TypeError, ValueError) as error:
            raise TimingProfileError(f"timing profile needs per_call_ms and dense_ms_per_gmac numbers ({error})"
                                     ) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form :meth:`from_dict` reads (without derivation or sources)."""
        return {"name": self.name, "per_call_ms": self.per_call_ms, "dense_ms_per_gmac": self.dense_ms_per_gmac,
                "attention_ms_per_gmac": dict(self.attention_ms_per_gmac),
                "all_cores": {"cores": self.all_cores, "speedup": dict(self.all_cores_speedup)}}

    def speedup(self, op_class: str, cores: int) -> float:
        """How much faster ``op_class`` runs when one context spans ``cores`` cores."""
        full = self.all_cores_speedup.get(op_class, 1.0)
        if cores <= 1 or self.all_cores <= 1:
            return 1.0
        return 1.0 + (full - 1.0) * (min(cores, self.all_cores) - 1) / (self.all_cores - 1)

    def attention_rate(self, tiled: bool) -> float:
        """ms per GMAC of attention, tiled or fused."""
        return self.attention_ms_per_gmac["tiled" if tiled else "fused"]

    def shard_ms(self, dense_gmac: float, attention_gmac: float, tiled: bool, cores: int = 1,
                 calls: float = 1.0) -> float:
        """Time of ``calls`` calls doing these GMACs on a context of ``cores`` cores (calls = 0: the ops alone)."""
        return (calls * self.per_call_ms + self.dense_ms_per_gmac * dense_gmac / self.speedup("dense", cores)
                + self.attention_rate(tiled) * attention_gmac / self.speedup("attention", cores))


def available_profiles() -> list[str]:
    folder = resources.files("rk_siglip_ros.runtime") / "timing_profiles"
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".json"))


def load_timing_profile(profile: str | Path | dict[str, Any] | TimingProfile | None = None) -> TimingProfile:
    """A profile by packaged name (default :data:`DEFAULT_PROFILE`), JSON file path, dict, or TimingProfile."""
    if isinstance(profile, TimingProfile):
        return profile
    if isinstance(profile, dict):
        return TimingProfile.from_dict(profile)
    name = str(profile or DEFAULT_PROFILE)
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return TimingProfile.from_dict(json.loads(path.read_text()))
    packaged = resources.files("rk_siglip_ros.runtime") / "timing_profiles" / f"{name}.json"
    if not packaged.is_file():
        raise TimingProfileError(f"no timing profile {name!r}: not a .json file, and not one of the packaged profiles "
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
        raise TimingProfileError(f"shard {shard.name} records no MAC count; the timing model needs the builder's "
                                 "per-shard `macs` (rebuild the shard set)")
    if shard.attention_macs is not None:  # recorded by the builder (manifest v2): exact for parts of a layer too
        attention = min(float(shard.macs), float(shard.attention_macs))
    else:
        tokens, width = manifest.model.num_tokens, manifest.model.hidden_size
        attention = min(float(shard.macs), attention_blocks(shard) * 2.0 * tokens * tokens * width)
    return (shard.macs - attention) / 1e9, attention / 1e9



def predicted_ms(profile: TimingProfile, manifest: Manifest, shard: ShardSpec, cores: int = 1) -> float:
    """Time ``profile`` predicts for one call of ``shard`` on one core (or one context spanning ``cores`` cores)."""
    dense, attention = shard_gmacs(manifest, shard)
    return profile.shard_ms(dense, attention, attention_is_tiled(manifest), cores=cores)


def predicted_frame_ms(profile: TimingProfile, manifest: Manifest, cores_per_call: int = 1) -> float:
    """NPU time of one frame alone on idle cores: each stage as long as its slowest part, stages one after another.

    ``cores_per_call`` 1 is a chain on one core or a split set's parts each on its own core; the vendor's all-cores
    context (mode allcores) is ``profile.all_cores``. Host work between calls is not counted: the gap between this and
    a measured frame is the host's share.
    """
    return sum(max(predicted_ms(profile, manifest, manifest.shard(part.shard), cores=cores_per_call)
                   for part in stage.parts)
               for stage in manifest.execution_stages())

