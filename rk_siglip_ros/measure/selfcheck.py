"""On-board self-check: measure shard sets on this NPU, fit a timing profile, pick the fastest configuration.

Steps (the ``selfcheck`` console script runs them; the sim and the RKNN-Lite test double run the same code):

1. board facts that break boards: librknnrt version against the rknn-toolkit2 version each shard set was built
   with, NPU driver version, NPU clock (``unknown`` where this machine does not say);
2. per-shard call times on each core alone and on one context spanning all cores (frames one at a time, so nothing
   else competes), turned into :class:`~rk_siglip_ros.measure.profile_fit.CallTime` samples;
3. a least-squares timing profile from those samples (:func:`~rk_siglip_ros.measure.profile_fit.fit_profile`), with how
   well it explains them;
4. every shard set x scheduler mode with the encoder kept full (throughput, latency);
5. a ROS params file for the highest throughput and one for the lowest latency (``params_file:=`` of the launch
   file), the profile JSON and a JSON report.
"""

from __future__ import annotations

import glob
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rk_siglip_ros.manifest import Manifest
from rk_siglip_ros.measure.bench import BenchResult, ShardCall, bench_encoder, shard_call_times
from rk_siglip_ros.measure.profile_fit import ProfileFit, fit_profile
from rk_siglip_ros.runtime.backends.base import NPU_CORES, format_core
from rk_siglip_ros.runtime.backends.rknnlite import parse_version
from rk_siglip_ros.runtime.scheduler import MODES
from rk_siglip_ros.runtime.timing import DEFAULT_PROFILE

UNKNOWN = "unknown"
LIBRKNNRT_PATHS = ("usr/lib/librknnrt.so", "usr/lib64/librknnrt.so", "usr/lib/aarch64-linux-gnu/librknnrt.so",
                   "usr/local/lib/librknnrt.so")
DRIVER_PATHS = ("sys/kernel/debug/rknpu/version", "sys/module/rknpu/version", "proc/rknpu/version")
NPU_DEVFREQ_GLOB = "sys/class/devfreq/*npu*"
_LIBRKNNRT_VERSION = re.compile(rb"librknnrt version: ?(\d+\.\d+\.\d+[^\x00\n]*)")

Progress = Callable[[str], None]  # called once per step with what starts now


def runnable_modes(manifest: Manifest, modes: Sequence[str]) -> list[str]:
    """The ``modes`` this shard set can run (split mode runs split shard sets only)."""
    from rk_siglip_ros.runtime.encoder import mode_problem

    return [mode for mode in modes if mode_problem(mode, manifest) is None]


def step_count(manifests: Sequence[Manifest], cores: int, modes: Sequence[str]) -> int:
    """How many progress steps run_selfcheck takes: per shard set, each core alone (+ all cores), then each mode
    the set can run."""
    calls = cores + (1 if cores > 1 else 0)
    return sum(calls + len(runnable_modes(manifest, modes)) for manifest in manifests)


@dataclass
class BoardFacts:
    librknnrt: str = UNKNOWN
    driver: str = UNKNOWN
    npu_clock: dict[str, str] = field(default_factory=dict)  # devfreq device -> "1000 MHz (max 1000 MHz)"
    toolkits: dict[str, str] = field(default_factory=dict)  # shard set -> rknn-toolkit2 version that built it
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        clock = ", ".join(f"{name} {value}" for name, value in self.npu_clock.items()) or UNKNOWN
        lines = [f"librknnrt {self.librknnrt}; NPU driver {self.driver}; NPU clock {clock}"]
        for shards, toolkit in self.toolkits.items():
            lines.append(f"{shards}: built by rknn-toolkit2 {toolkit or UNKNOWN}")
        return lines + [f"PROBLEM: {problem}" for problem in self.problems]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _sdk_field(sdk_version: str | None, name: str) -> str | None:
    """'API' or 'DRV' from RKNNLite.get_sdk_version()'s text ("  API: 2.3.2 (...)\\n  DRV: 0.9.8")."""
    match = re.search(rf"{name}:\s*([^\n]+)", sdk_version or "")
    return match.group(1).strip() if match else None


def librknnrt_version(sdk_version: str | None, root: Path) -> str:
    """librknnrt's version: from a context's get_sdk_version() text, else from the library file's own banner."""
    found = _sdk_field(sdk_version, "API")
    if found:
        return found
    for relative in LIBRKNNRT_PATHS:
        try:
            match = _LIBRKNNRT_VERSION.search((root / relative).read_bytes())
        except OSError:
            continue
        if match:
            return match.group(1).decode(errors="replace").strip()
    return UNKNOWN


def npu_driver_version(sdk_version: str | None, root: Path) -> str:
    """The rknpu kernel driver's version: get_sdk_version()'s DRV field, else what /sys or /proc says."""
    found = _sdk_field(sdk_version, "DRV")
    if found:
        return found
    for relative in DRIVER_PATHS:
        text = _read_text(root / relative)
        if text:
            return text.splitlines()[0]
    return UNKNOWN


def npu_clock(root: Path) -> dict[str, str]:
    """Current (and max) NPU clock per devfreq device, e.g. {"fdab0000.npu": "1000 MHz (max 1000 MHz)"}."""
    clocks = {}
    for folder in sorted(glob.glob(str(root / NPU_DEVFREQ_GLOB))):
        current, most = _read_text(Path(folder) / "cur_freq"), _read_text(Path(folder) / "max_freq")
        if current and current.isdigit():
            text = f"{int(current) / 1e6:.0f} MHz"
            if most and most.isdigit():
                text += f" (max {int(most) / 1e6:.0f} MHz)"
            clocks[Path(folder).name] = text
    return clocks


def board_facts(manifests: dict[str, Manifest], sdk_version: str | None = None, root: Path = Path("/")) -> BoardFacts:
    """What breaks boards, read from what this machine exposes (``root``: where /usr and /sys are)."""
    facts = BoardFacts(librknnrt=librknnrt_version(sdk_version, root), driver=npu_driver_version(sdk_version, root),
                       npu_clock=npu_clock(root))
    runtime = parse_version(facts.librknnrt) if facts.librknnrt != UNKNOWN else None
    for label, manifest in manifests.items():
        toolkit = str(manifest.toolchain.get("rknn_toolkit2", "") or "")
        facts.toolkits[label] = toolkit
        needed = parse_version(toolkit)
        if runtime is not None and needed is not None and runtime < needed:
            facts.problems.append(f"{label} was built by rknn-toolkit2 {toolkit} but librknnrt is {facts.librknnrt}: "
                                  f"update librknnrt.so to >= {toolkit} or rebuild the shards with the board's version")
    return facts


@dataclass
class Choice:
    goal: str  # "throughput" | "latency"
    result: BenchResult
    params_file: Path


@dataclass
class SelfcheckReport:
    backend: str
    cores: tuple[int, ...]
    facts: BoardFacts
    calls: list[ShardCall]
    fit: ProfileFit | None  # None when the measurements cannot separate the terms (fit_problem says why)
    results: list[BenchResult]
    choices: list[Choice]
    profile_file: Path | None
    fit_problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "cores": list(self.cores), "board": asdict(self.facts),
                "calls": [{"shards": c.shards, "shard": c.shard, "core": format_core(c.core), "ms": c.ms,
                           "calls": c.calls} for c in self.calls],
                "fit": None if self.fit is None else {
                    "profile": self.fit.profile.to_dict(), "fitted": self.fit.fitted, "kept": self.fit.kept,
                    "rms_error": self.fit.rms_error, "worst_error": self.fit.worst[0]},
                "fit_problem": self.fit_problem,
                "results": [asdict(r) for r in self.results],
                "choices": {c.goal: {"shards": c.result.shards, "mode": c.result.mode,
                                     "frames_per_s": c.result.frames_per_s,
                                     "latency_p50_ms": c.result.latency_p50_ms, "params_file": str(c.params_file)}
                            for c in self.choices},
                "profile_file": None if self.profile_file is None else str(self.profile_file)}


def measure_calls(manifest: Manifest, label: str, backend: str, cores: Sequence[int], frames: int = 3,
                  timing_profile: str | None = None, time_scale: float = 1.0, warmup: int = 1,
                  progress: Progress | None = None) -> list[ShardCall]:
    """Per-shard call times of one shard set on each core alone, then on one context spanning all ``cores``."""
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    # The all-cores context gets as many frames as the single cores together, so both stages of the fit rest on as
    # many calls per shard.
    groups: list[tuple[str, tuple[int, ...], int]] = [("sequential", (core,), frames) for core in cores]
    if len(cores) > 1:
        groups.append(("allcores", tuple(cores), frames * len(cores)))
    calls: list[ShardCall] = []
    for mode, group, count in groups:
        if progress:
            progress(f"{label}: shard call times on {format_core(group if mode == 'allcores' else group[0])}")
        with SiglipEncoder.open(manifest, backend=backend, mode=mode, cores=group, timing_profile=timing_profile,
                                time_scale=time_scale, trace=True) as encoder:
            calls.extend(shard_call_times(encoder, frames=count, warmup=warmup, time_scale=time_scale, label=label))
    return calls


def params_yaml(shards: str, backend: str, mode: str, cores: Sequence[int], timing_profile: Path | str | None,
                comments: Sequence[str]) -> str:
    """A ROS 2 params file for encoder_node ("/**" matches it whatever its name); values are JSON, which is YAML."""
    lines = [f"# {line}" for line in comments]
    lines += ["/**:", "  ros__parameters:", f"    shards: {json.dumps(shards)}", f"    backend: {json.dumps(backend)}",
              f"    mode: {json.dumps(mode)}", f"    cores: {json.dumps([int(c) for c in cores])}"]
    if timing_profile is not None:
        lines.append(f"    timing_profile: {json.dumps(str(timing_profile))}")
    return "\n".join(lines) + "\n"


def write_choice(goal: str, result: BenchResult, backend: str, cores: Sequence[int], out: Path,
                 timing_profile: Path | str | None) -> Choice:
    """``goal``.params.yaml for ``result``'s shard set and mode; ``timing_profile`` only for the sim backend."""
    path = out / f"{goal}.params.yaml"
    measured = (f"{result.frames_per_s:.2f} frames/s, latency p50 {result.latency_p50_ms:.0f} ms on {backend}"
                + (" (sim: a prediction from the timing profile, not a measurement)" if backend == "sim" else ""))
    comments = [f"written by selfcheck {time.strftime('%Y-%m-%d %H:%M:%S')}: the {goal} choice "
                f"({result.profile} x {result.mode}: {measured})",
                f"ros2 launch rk_siglip_ros encoder.launch.py params_file:={path.resolve()} "
                "image_topics:=\"[/camera/image_raw]\"",
                "Parameters not listed here take the node's defaults (config/encoder.yaml)."]
    timing = timing_profile if backend == "sim" else None
    path.write_text(params_yaml(str(Path(result.shards).resolve()), backend, result.mode, cores, timing, comments))
    return Choice(goal, result, path)


def run_selfcheck(shard_dirs: Sequence[str | Path], out: Path, backend: str = "auto", cores: Sequence[int] = NPU_CORES,
                  modes: Sequence[str] = MODES, frames: int = 10, call_frames: int = 3,
                  timing_profile: str | None = None, time_scale: float = 1.0, image_size: tuple[int, int] = (480, 640),
                  progress: Progress | None = None, root: Path = Path("/")) -> SelfcheckReport:
    """Run every step (see the module doc) and write ``profile.json``, ``throughput.params.yaml``,
    ``latency.params.yaml`` and ``report.json`` into ``out``."""
    from rk_siglip_ros.manifest import load_manifest
    from rk_siglip_ros.runtime.backends import resolve_backend_name
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    manifests = {str(Path(d)): load_manifest(d, verify=()) for d in shard_dirs}
    out.mkdir(parents=True, exist_ok=True)  # an unusable --out is found now, not after minutes of measuring
    names = {resolve_backend_name(backend, m) for m in manifests.values()}
    if len(names) != 1:
        from rk_siglip_ros.runtime.backends import BackendError

        raise BackendError(f"--backend {backend} resolves differently per shard set ({sorted(names)}); name one")
    backend = names.pop()
    scale = time_scale if backend == "sim" else 1.0
    sim_profile = (timing_profile or DEFAULT_PROFILE) if backend == "sim" else None
    calls: list[ShardCall] = []
    for label, manifest in manifests.items():
        calls += measure_calls(manifest, label, backend, cores, call_frames, sim_profile, scale, progress=progress)
    results: list[BenchResult] = []
    sdk_version = None
    for label, manifest in manifests.items():
        for mode in runnable_modes(manifest, modes):
            if progress:
                progress(f"{label}: {mode} with the encoder kept full")
            with SiglipEncoder.open(manifest, backend=backend, mode=mode, cores=cores, timing_profile=sim_profile,
                                    time_scale=scale) as encoder:
                sdk_version = sdk_version or getattr(encoder.backend, "sdk_version", None)
                results.append(bench_encoder(encoder, frames=frames, warmup=1, image_size=image_size,
                                             time_scale=scale, label=label))
    facts = board_facts(manifests, sdk_version, root)
    fit: ProfileFit | None = None
    fit_problem = profile_file = None
    try:
        fit = fit_profile([call.sample for call in calls], name="selfcheck", base=sim_profile)
    except ValueError as error:  # e.g. one shard set: the configurations are still measured and chosen
        fit_problem = str(error)
    if fit is not None:
        profile_file = out / "profile.json"
        profile_data = fit.profile.to_dict()
        profile_data["description"] = (f"fitted by selfcheck on {backend} ({time.strftime('%Y-%m-%d')}), librknnrt "
                                       f"{facts.librknnrt}, NPU driver {facts.driver}")
        profile_data["fit"] = {"fitted": fit.fitted, "kept": fit.kept, "rms_error": fit.rms_error}
        profile_data["anchors"] = [call.sample.to_dict() for call in calls]
        profile_file.write_text(json.dumps(profile_data, indent=2) + "\n")
    # The node's sim (if that is the backend) runs the board's own fit when there is one.
    timing = profile_file.resolve() if profile_file is not None else sim_profile
    choices = [write_choice("throughput", max(results, key=lambda r: r.frames_per_s), backend, cores, out, timing),
               write_choice("latency", min(results, key=lambda r: r.latency_p50_ms), backend, cores, out, timing)]
    report = SelfcheckReport(backend, tuple(cores), facts, calls, fit, results, choices, profile_file, fit_problem)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return report


def per_core_ratios(fit: ProfileFit) -> dict[str, float]:
    """Mean measured / predicted per core (or core group): a core that runs slower than the others shows here."""
    groups: dict[str, list[float]] = {}
    for sample, predicted in zip(fit.samples, fit.predicted_ms, strict=True):
        where = sample.label.rsplit(" on ", 1)[-1]
        if predicted > 0:
            groups.setdefault(where, []).append(sample.ms / predicted)
    return {where: sum(values) / len(values) for where, values in sorted(groups.items())}
