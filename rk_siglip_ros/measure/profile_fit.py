"""Fit an NPU timing profile to measured shard call times by least squares (numpy only: it runs on the robot).

The model is the sim's (:class:`~rk_siglip_ros.runtime.backends.sim.TimingProfile`): one call on one core costs
``per_call + dense x dense GMAC + attention[fused|tiled] x attention-score GMAC``; one context spanning all cores
divides each op class by its all-cores speedup. The fit runs in two linear stages:

1. single-core samples -> per-call, dense, fused-attention and tiled-attention terms (ordinary least squares in ms,
   so long calls weigh most; a term no sample exercises, e.g. tiled attention when no shard set was tiled, is not
   fitted and keeps the base profile's value; a term that comes out negative is pinned to 0 and the rest refitted);
2. all-cores samples -> 1/speedup of the dense and attention classes, given stage 1's per-call and rates. If the
   samples cannot tell the two classes apart, only the dense class is fitted and attention keeps the base value.

Timing samples carry stray delays (an interrupt, another process on the CPU, a DVFS step): after each stage's first
fit, samples whose relative residual lies more than ``outlier_mads`` robust deviations (MAD) from the median
residual, and more than 2 %, are set aside and the stage is refitted; the fit says how many. ``outlier_mads=None``
keeps every sample (the packaged profiles' published anchors are already medians).

A sample can also be a sum of calls (a whole shard chain timed end to end: ``calls`` = its shard count) or one op
class alone (a per-op profile: ``calls`` = 0), which is how the packaged profiles' published anchors are written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rk_siglip_ros.runtime.timing import TimingProfile, load_timing_profile

SINGLE_TERMS = ("per_call_ms", "dense_ms_per_gmac", "attention_fused_ms_per_gmac", "attention_tiled_ms_per_gmac")
SPLIT_TERMS = ("all_cores_speedup_dense", "all_cores_speedup_attention")
OUTLIER_MADS = 4.0  # default: residuals beyond 4 robust standard deviations are stray delays
OUTLIER_FLOOR = 0.02  # ...and never closer than 2 % of the measured time


@dataclass(frozen=True)
class CallTime:
    """One measurement: what ran (calls, dense and attention-score GMAC, tiled attention?, on how many cores at once)
    and how long it took in milliseconds."""

    calls: float
    dense_gmac: float
    attention_gmac: float
    ms: float
    tiled: bool = False
    cores: int = 1
    label: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallTime:
        return cls(calls=float(data["calls"]), dense_gmac=float(data["dense_gmac"]),
                   attention_gmac=float(data["attention_gmac"]), ms=float(data["ms"]),
                   tiled=bool(data.get("tiled", False)), cores=int(data.get("cores", 1)),
                   label=str(data.get("label", "")))

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "calls": self.calls, "dense_gmac": self.dense_gmac,
                "attention_gmac": self.attention_gmac, "tiled": self.tiled, "cores": self.cores, "ms": self.ms}


@dataclass
class ProfileFit:
    """A fitted profile, which of its terms the samples determined, and how well it explains them."""

    profile: TimingProfile
    fitted: list[str]  # names from SINGLE_TERMS / SPLIT_TERMS the samples determined
    kept: list[str]  # terms taken from the base profile (not exercised by any sample)
    samples: list[CallTime]
    predicted_ms: list[float] = field(default_factory=list)
    outliers: list[CallTime] = field(default_factory=list)  # samples set aside as stray delays (not in the fit)

    def _pairs(self) -> list[tuple[float, CallTime]]:
        """(relative error, sample) of every sample the fit used."""
        ignored = {id(sample) for sample in self.outliers}
        return [((p - s.ms) / s.ms, s) for p, s in zip(self.predicted_ms, self.samples, strict=True)
                if s.ms > 0 and id(s) not in ignored]

    @property
    def relative_errors(self) -> list[float]:
        """(predicted - measured) / measured per sample the fit used (outliers left out)."""
        return [error for error, _ in self._pairs()]

    @property
    def rms_error(self) -> float:
        errors = self.relative_errors
        return math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else float("nan")

    @property
    def worst(self) -> tuple[float, CallTime | None]:
        """The largest relative error among the samples the fit used, and its sample."""
        return max(self._pairs(), key=lambda pair: abs(pair[0]), default=(float("nan"), None))

    def summary(self) -> str:
        p = self.profile
        error, sample = self.worst
        where = f" ({sample.label})" if sample is not None and sample.label else ""
        lines = [f"per_call {p.per_call_ms:.2f} ms, dense {p.dense_ms_per_gmac:.3f} ms/GMAC, attention fused "
                 f"{p.attention_ms_per_gmac['fused']:.3f} / tiled {p.attention_ms_per_gmac['tiled']:.3f} ms/GMAC, "
                 f"all-cores speedup dense {p.all_cores_speedup['dense']:.2f}x, attention "
                 f"{p.all_cores_speedup['attention']:.2f}x",
                 f"explains {len(self.samples) - len(self.outliers)} measurements to {100 * self.rms_error:.1f} % rms, "
                 f"worst {100 * error:+.1f} %{where}"
                 + (f"; {len(self.outliers)} set aside as stray delays" if self.outliers else "")]
        if self.kept:
            lines.append(f"not measured (kept from the base profile): {', '.join(self.kept)}")
        return "\n".join(lines)


def predict_ms(profile: TimingProfile, sample: CallTime) -> float:
    """What ``profile`` predicts for ``sample`` (a sum of ``calls`` calls, or one op class when calls = 0)."""
    return profile.shard_ms(sample.dense_gmac, sample.attention_gmac, sample.tiled, sample.cores, calls=sample.calls)


def _nonnegative_lstsq(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (a small active set: pin the most negative to 0, refit)."""
    active = list(range(matrix.shape[1]))
    solution = np.zeros(matrix.shape[1])
    while active:
        coefficients = np.linalg.lstsq(matrix[:, active], target, rcond=None)[0]
        if (coefficients >= 0).all():
            solution[active] = coefficients
            break
        active.pop(int(np.argmin(coefficients)))
    return solution


def _robust_lstsq(matrix: np.ndarray, target: np.ndarray, outlier_mads: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Nonnegative least squares, refitted without the rows whose relative residual is an outlier (see the module
    doc); returns the solution and which rows it used. Never drops a row the remaining ones cannot do without."""
    keep = np.ones(len(target), dtype=bool)
    solution = _nonnegative_lstsq(matrix, target)
    if outlier_mads is None:
        return solution, keep
    scale = np.maximum(np.abs(target), 1e-9)
    for _ in range(5):
        relative = (target - matrix @ solution) / scale
        center = float(np.median(relative[keep]))
        spread = 1.4826 * float(np.median(np.abs(relative[keep] - center)))
        candidate = np.abs(relative - center) <= max(outlier_mads * spread, OUTLIER_FLOOR)
        if (candidate == keep).all() or np.linalg.matrix_rank(matrix[candidate]) < np.linalg.matrix_rank(matrix):
            break
        keep = candidate
        solution = _nonnegative_lstsq(matrix[keep], target[keep])
    return solution, keep


def _single_core_terms(samples: Sequence[CallTime],
                       outlier_mads: float | None) -> tuple[dict[str, float], list[str], list[CallTime]]:
    rows = [s for s in samples if s.cores == 1]
    columns = {
        "per_call_ms": [s.calls for s in rows],
        "dense_ms_per_gmac": [s.dense_gmac for s in rows],
        "attention_fused_ms_per_gmac": [0.0 if s.tiled else s.attention_gmac for s in rows],
        "attention_tiled_ms_per_gmac": [s.attention_gmac if s.tiled else 0.0 for s in rows],
    }
    used = [name for name, values in columns.items() if any(v > 0 for v in values)]
    if not rows or not used:
        return {}, [], []
    matrix = np.array([columns[name] for name in used], dtype=float).T
    if np.linalg.matrix_rank(matrix) < len(used):
        raise ValueError(f"the measurements cannot separate {', '.join(used)}: measure shard sets of several cuts "
                         "(e.g. whole, pipeline3 and seed), so shards differ in size and in their attention share")
    solution, keep = _robust_lstsq(matrix, np.array([s.ms for s in rows]), outlier_mads)
    outliers = [row for row, kept in zip(rows, keep, strict=True) if not kept]
    return dict(zip(used, solution.tolist(), strict=True)), used, outliers


def _split_terms(samples: Sequence[CallTime], profile: TimingProfile,
                 outlier_mads: float | None) -> tuple[dict[str, float], list[str], list[CallTime]]:
    rows = [s for s in samples if s.cores > 1 and s.cores == profile.all_cores]
    if not rows:
        return {}, [], []
    dense = np.array([profile.dense_ms_per_gmac * s.dense_gmac for s in rows])
    attention = np.array([profile.attention_rate(s.tiled) * s.attention_gmac for s in rows])
    rest = np.array([s.ms - s.calls * profile.per_call_ms for s in rows])
    both = np.stack([dense, attention], axis=1)
    if attention.any() and np.linalg.matrix_rank(both) == 2:
        inverse, keep = _robust_lstsq(both, rest, outlier_mads)
        names = list(SPLIT_TERMS)
    else:  # one class only: the dense one (what the RK3588 runtime splits); attention keeps its base speedup
        inverse, keep = _robust_lstsq(dense[:, None], rest - attention / profile.all_cores_speedup["attention"],
                                      outlier_mads)
        names = ["all_cores_speedup_dense"]
    speedups = {name: (1.0 / value if value > 0 else float("inf")) for name, value in zip(names, inverse, strict=True)}
    return speedups, names, [row for row, kept in zip(rows, keep, strict=True) if not kept]


def fit_profile(samples: Sequence[CallTime], name: str = "fitted",
                base: str | TimingProfile | dict[str, Any] | None = None,
                outlier_mads: float | None = OUTLIER_MADS) -> ProfileFit:
    """Least-squares timing profile for ``samples``; terms they do not exercise come from ``base`` (default: the
    default packaged profile); stray delays set aside unless ``outlier_mads`` is None. ValueError when the samples
    cannot separate the terms they exercise."""
    samples = list(samples)
    start = load_timing_profile(base)
    single, fitted, outliers = _single_core_terms(samples, outlier_mads)
    attention = dict(start.attention_ms_per_gmac)
    attention["fused"] = single.get("attention_fused_ms_per_gmac", attention["fused"])
    attention["tiled"] = single.get("attention_tiled_ms_per_gmac", attention["tiled"])
    profile = replace(start, name=name, per_call_ms=single.get("per_call_ms", start.per_call_ms),
                      dense_ms_per_gmac=single.get("dense_ms_per_gmac", start.dense_ms_per_gmac),
                      attention_ms_per_gmac=attention)
    split, split_fitted, split_outliers = _split_terms(samples, profile, outlier_mads)
    speedup = dict(profile.all_cores_speedup)
    speedup["dense"] = split.get("all_cores_speedup_dense", speedup["dense"])
    speedup["attention"] = split.get("all_cores_speedup_attention", speedup["attention"])
    profile = replace(profile, all_cores_speedup=speedup)
    fitted = fitted + split_fitted
    kept = [term for term in (*SINGLE_TERMS, *SPLIT_TERMS) if term not in fitted]
    return ProfileFit(profile, fitted, kept, samples, [predict_ms(profile, s) for s in samples],
                      outliers + split_outliers)


def term_values(profile: TimingProfile) -> dict[str, float]:
    """The profile's terms by the names :data:`SINGLE_TERMS` and :data:`SPLIT_TERMS` use."""
    return {"per_call_ms": profile.per_call_ms, "dense_ms_per_gmac": profile.dense_ms_per_gmac,
            "attention_fused_ms_per_gmac": profile.attention_ms_per_gmac["fused"],
            "attention_tiled_ms_per_gmac": profile.attention_ms_per_gmac["tiled"],
            "all_cores_speedup_dense": profile.all_cores_speedup["dense"],
            "all_cores_speedup_attention": profile.all_cores_speedup["attention"]}
