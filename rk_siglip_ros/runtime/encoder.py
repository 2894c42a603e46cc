"""SiglipEncoder: the one encoder API for the node, the bag tool, the benchmarks and users' own code.

It ties the pieces together: the manifest (what to run), the preprocessor (image -> pixel tensor), a backend (one
runner per (shard, core)), the scheduler (which core runs what, when) and the host-side scales, token rotations,
all-gathers and pooling between and after the shards. The scheduler sees calls: each part of each of the manifest's
stages (for a chain of shards, each shard). Example::

    with SiglipEncoder.open("shards/siglip-b16-512", backend="auto", mode="pipeline") as encoder:
        vector = encoder.encode(rgb_uint8_image)          # (D,) float32, L2-normalised
        futures = [encoder.submit(image) for image in images]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from rk_siglip_ros.errors import RunFailedError
from rk_siglip_ros.manifest import Manifest, ManifestError, PartSpec, StageSpec, load_manifest, verify_files
from rk_siglip_ros.runtime.backends import Backend, ShardRunner, create_backend, resolve_backend_name
from rk_siglip_ros.runtime.backends.base import NPU_CORES
from rk_siglip_ros.runtime.postprocess import pooled_embedding, token_matrix
from rk_siglip_ros.runtime.preprocess import Preprocessor
from rk_siglip_ros.runtime.scheduler import (
    CALL_TIMEOUT_S,
    CLOSE_TIMEOUT_S,
    BusyWindow,
    Core,
    Scheduler,
    StuckCall,
    check_mode,
)
from rk_siglip_ros.runtime.stages import GatherBuffer, part_feed

DEFAULT_CORES = NPU_CORES
# A host scale pair multiplying to 1 within this tolerance is skipped: the tensor goes to the next shard untouched.
_UNIT = 1e-9

LOG = logging.getLogger(__name__)


class EncoderOutputError(RunFailedError, RuntimeError):
    """A frame's final output is unusable (NaN/inf, or not ``embedding_dim`` wide): the frame fails, nothing of it
    is returned. Repeated on every frame it points at the shard set or the NPU, not at the images."""


@dataclass
class EncodeResult:
    embedding: np.ndarray  # (D,) float32, L2-normalised
    tokens: np.ndarray | None  # (T, C) float32 when requested
    latency_s: float  # submit() -> result


@dataclass
class HostTimes:
    """Mean host-side seconds per frame, by step (what the CPU does around the NPU)."""

    frames: int
    preprocess_s: float
    scales_s: float
    postprocess_s: float

    @property
    def total_s(self) -> float:
        return self.preprocess_s + self.scales_s + self.postprocess_s


@dataclass
class _HostTotals:
    """Host-side seconds summed over frames so far (HostTimes is their mean per frame)."""

    frames: int = 0
    preprocess_s: float = 0.0
    scales_s: float = 0.0
    postprocess_s: float = 0.0


def mode_problem(mode: str, manifest: Manifest) -> str | None:
    """Why ``mode`` cannot run this shard set (None: it can). Split mode needs stages of parallel parts."""
    if mode == "split" and not any(stage.gather is not None for stage in manifest.stages):
        return (f"mode split runs the parts of a split shard set on all cores at once, and this shard set was built "
                f"with --profile {manifest.profile}: build one with `build_shards --profile split`, or pick another "
                "mode")
    return None


@dataclass(frozen=True)
class _Call:
    """One call the scheduler runs: a part of a stage (a whole shard, in a chain)."""

    stage: int
    part: PartSpec
    shard: int  # index into manifest.shards
    gather: StageSpec | None  # the stage, when its parts' rows are gathered
    name: str  # a shard's name, with the rows it computes in a gathered stage: "l3[342:683]"


def _calls(manifest: Manifest) -> list[_Call]:
    index = {shard.name: k for k, shard in enumerate(manifest.shards)}
    calls = []
    for number, stage in enumerate(manifest.execution_stages()):
        for part in stage.parts:
            name = part.shard if stage.gather is None else f"{part.shard}[{part.start}:{part.stop}]"
            calls.append(_Call(number, part, index[part.shard], stage if stage.gather is not None else None, name))
    return calls


class _FrameState:
    __slots__ = ("tensors", "submitted", "want_tokens", "last_call", "lock", "left")

    def __init__(self, tensors: dict[str, tuple[np.ndarray | GatherBuffer, float]], submitted: float,
                 want_tokens: bool, stage_sizes: list[int]) -> None:
        self.tensors = tensors  # name -> (array or gather buffer, factor): the true value is array * factor
        self.submitted = submitted
        self.want_tokens = want_tokens
        self.last_call = (-1, -1)  # (call, core) of the latest call, to name it in output errors
        self.lock = threading.Lock()  # split mode: a stage's parts run at once on different cores
        self.left = list(stage_sizes)  # per stage, calls not yet returned: the last one frees the stage's inputs


class SiglipEncoder:
    """Use :meth:`open`; the constructor takes already-built parts."""

    def __init__(self, manifest: Manifest, backend: Backend, mode: str = "pipeline",
                 cores: Sequence[int] = DEFAULT_CORES, trace: bool = False, queue_slots: int = 0,
                 call_timeout_s: float | None = CALL_TIMEOUT_S) -> None:
        self.manifest = manifest
        self.backend = backend
        self.mode = mode
        self.cores = tuple(int(c) for c in cores)
        try:
            self._preprocess = Preprocessor(manifest.preprocess, manifest.pixel_input.scale)
        except ValueError as error:  # an unsupported resample/color/layout: the shard set's problem, not a bug
            raise ManifestError(f"{manifest.root or 'manifest'}: {error}") from None
        problem = mode_problem(mode, manifest)
        if problem is not None:
            raise ManifestError(f"{manifest.root or 'manifest'}: {problem}")
        self._pixel_factor = 1.0 / manifest.pixel_input.scale
        self._calls = _calls(manifest)
        stages = manifest.execution_stages()
        self._stage_sizes = [len(stage.parts) for stage in stages]
        self._last_use = _last_uses(manifest, stages)
        self._host_lock = threading.Lock()
        self._host = _HostTotals()
        self._runners: dict[tuple[int, int], ShardRunner] = {}
        self._closed = False
        costs = [backend.estimated_cost(manifest, manifest.shards[call.shard]) for call in self._calls]
        groups: list[list[int]] = [[] for _ in stages]
        for number, call in enumerate(self._calls):
            groups[call.stage].append(number)
        self._scheduler = Scheduler(mode, self.cores, costs, self._run_shard, self._finish, queue_slots=queue_slots,
                                    trace=trace, call_timeout_s=call_timeout_s, stages=groups)
        try:
            backend.set_concurrency(len(self._scheduler.plan))
            for assignment in self._scheduler.plan:
                for number, core in assignment:
                    shard = self._calls[number].shard  # a rotated layer graph serves all its parts on one core
                    if (shard, core) not in self._runners:
                        self._runners[(shard, core)] = backend.load(manifest, manifest.shards[shard], core)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, shards: str | Path | Manifest, backend: str = "auto", mode: str = "pipeline",
             cores: Sequence[int] = DEFAULT_CORES, timing_profile: str | Path | dict[str, Any] | None = None,
             *, time_scale: float = 1.0, threads: int | None = None, trace: bool = False,
             queue_slots: int = 0, call_timeout_s: float | None = CALL_TIMEOUT_S) -> SiglipEncoder:
        """Load the shard set (a folder, or a Manifest already loaded from one), verify the files the backend
        loads, and start the workers.

        shards: a shard folder, or a :class:`Manifest` from ``load_manifest`` (its ``root`` set); files of a kind the
        manifest records in ``verified_kinds`` are not hashed again. backend: auto | onnxruntime | rknnlite | sim.
        mode: scheduler.MODES (e.g. allcores). cores: NPU cores (for onnxruntime, worker slots). timing_profile /
        time_scale: the sim backend's profile (name, JSON path or dict) and a factor on its sleep times (tests use
        small ones). threads: onnxruntime intra-op threads per session (default: CPUs / concurrent workers). trace:
        keep per-shard events (``scheduler.trace``). queue_slots: frames admitted beyond one per worker. Default 0: one
        waiting frame could absorb jitter in a pipeline, but measured in the sim it bought no throughput and added a
        stage time of latency, and without it a frame the node submits is always the freshest one the cores take next.
        call_timeout_s: a shard call running longer is declared stuck (a hung NPU): its frame fails with
        StuckCallError and, in replicas mode, its core leaves the rotation (None: never).
        """
        check_mode(mode)  # before any file is read or hashed (the constructor's scheduler checks it too)
        if isinstance(shards, Manifest):
            manifest = shards
            if manifest.root is None:
                raise ManifestError("SiglipEncoder.open needs a manifest loaded with load_manifest(dir) (its root "
                                    "folder is unknown), or the shard folder itself")
        else:
            manifest = load_manifest(shards, verify=())
        name = resolve_backend_name(backend, manifest)
        instance = create_backend(name, manifest, timing_profile=timing_profile, time_scale=time_scale,
                                  threads=threads)
        kind = instance.file_kind
        if kind is not None:
            if not manifest.has_files(kind):
                raise ManifestError(f"{manifest.root}: the {name} backend needs .{kind} files and this shard set "
                                    f"has none for some shards; rebuild with --formats {kind} or pick another "
                                    "--backend")
            if kind not in manifest.verified_kinds:
                verify_files(manifest, kind, str(manifest.root))
        return cls(manifest, instance, mode=mode, cores=cores, trace=trace, queue_slots=queue_slots,
                   call_timeout_s=call_timeout_s)

    # ------------------------------------------------------------------------------------------------- public

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest.model.embedding_dim)

    @property
    def capacity(self) -> int:
        """Frames that can be in flight without submit() blocking."""
        return self._scheduler.capacity

    @property
    def in_flight(self) -> int:
        return self._scheduler.in_flight

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    def submit(self, image: np.ndarray, tokens: bool = False) -> Future:
        """Queue one (H, W, 3) uint8 RGB image; the future resolves to an :class:`EncodeResult`.

        Raises ValueError for a bad image (before queueing) and blocks while ``capacity`` frames are in flight.
        """
        submitted = time.perf_counter()
        pixels = self._preprocess(image)
        self._add_host(1, time.perf_counter() - submitted, 0.0, 0.0)
        state = _FrameState({self.manifest.pixel_input.name: (pixels, self._pixel_factor)}, submitted, tokens,
                            self._stage_sizes)
        return self._scheduler.submit(state)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """One image -> its (D,) L2-normalised embedding."""
        return self.submit(image).result().embedding

    def encode_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images -> (N, D) embeddings in input order, keeping every core busy while they flow."""
        futures = [self.submit(image) for image in images]
        if not futures:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.stack([future.result().embedding for future in futures])

    def core_busy(self) -> dict[int, float]:
        """Fraction of wall time each core was busy since the previous ``core_busy()`` call. This is one shared
        window; a second reader (diagnostics beside a benchmark) should hold its own :meth:`busy_window`."""
        return self._scheduler.core_busy()

    def busy_window(self) -> BusyWindow:
        """A per-reader window: ``window.read()`` gives busy fractions since that window's previous read."""
        return self._scheduler.busy_window()

    def retired_cores(self) -> dict[int, str]:
        """Cores taken out of rotation after repeated failures (replicas mode), with the reason."""
        return self._scheduler.retired_cores()

    def stuck_calls(self) -> list[StuckCall]:
        """Shard calls running longer than the call timeout now (or left behind by close())."""
        return self._scheduler.stuck_calls()

    def shard_times(self) -> dict[str, float]:
        """Mean seconds per call of each shard so far; for a gathered stage, of each part (``l3[342:683]``)."""
        return {self._calls[k].name: mean for k, (_, mean) in self._scheduler.shard_times().items()}

    def call_shard(self, call: int) -> tuple[str, int]:
        """The name of scheduler call ``call`` (as in :meth:`shard_times`) and the index of the shard it runs."""
        return self._calls[call].name, self._calls[call].shard

    def host_times(self) -> HostTimes:
        with self._host_lock:
            totals = self._host
            n = max(totals.frames, 1)
            return HostTimes(totals.frames, totals.preprocess_s / n, totals.scales_s / n, totals.postprocess_s / n)

    def reset_stats(self) -> None:
        with self._host_lock:
            self._host = _HostTotals()
        self._scheduler.core_busy()

    def close(self, cancel: bool = False, timeout: float | None = CLOSE_TIMEOUT_S) -> list[StuckCall]:
        """Stop accepting frames, finish (or cancel) those in flight, join the workers, release every runner.

        Bounded: returns within about ``timeout`` s even if a shard call never returns (a hung NPU). Such calls are
        logged and returned; their runners are not released (releasing an NPU context under a running inference is
        unsafe). A runner whose ``close()`` raises is logged and the others are still released.
        """
        if self._closed:
            return []
        self._closed = True
        scheduler = getattr(self, "_scheduler", None)
        stuck = scheduler.close(cancel=cancel, timeout=timeout) if scheduler is not None else []
        still_running = {(call.shard, call.core) for call in stuck}  # only the stuck contexts stay unreleased
        runners, self._runners = self._runners, {}
        failures = []
        for (shard, core), runner in runners.items():
            if (shard, core) in still_running:
                continue
            try:
                runner.close()
            except Exception as error:  # noqa: BLE001 - release the other NPU contexts whatever one of them does
                failures.append(f"shard {shard} on core {core}: {type(error).__name__}: {error}")
        if failures:
            LOG.error("releasing runners failed (the others were released): %s", "; ".join(failures))
        return stuck

    def __enter__(self) -> SiglipEncoder:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- worker callbacks

    def _run_shard(self, index: int, core: Core, state: _FrameState) -> _FrameState:
        call = self._calls[index]
        shard = self.manifest.shards[call.shard]
        start = time.perf_counter()
        feed = {}
        for spec in shard.inputs:
            value, factor = state.tensors[spec.name]
            array = part_feed(call.part, value)  # rotated so the part's rows come first (a view of a gather buffer)
            multiplier = factor * spec.scale
            feed[spec.name] = array if abs(multiplier - 1.0) <= _UNIT else array * np.float32(multiplier)
        scaled = time.perf_counter()
        state.last_call = (index, core)
        outputs = self._runners[(call.shard, core)].run(feed)
        gathered = time.perf_counter()
        if call.gather is not None:
            gather = call.gather.gather
            with state.lock:  # the stage's first part to return makes the buffer
                if gather.name not in state.tensors:
                    state.tensors[gather.name] = (GatherBuffer(gather), gather.scale)
                buffer = state.tensors[gather.name][0]
            buffer.put(call.part, outputs[shard.outputs[0].name])  # disjoint rows: no lock needed
        else:
            for spec in shard.outputs:
                state.tensors[spec.name] = (outputs[spec.name], spec.scale)
        with state.lock:
            state.left[call.stage] -= 1
            if state.left[call.stage] == 0:  # the stage is complete: what no later stage reads goes
                for name in self._last_use.get(call.stage, ()):
                    state.tensors.pop(name, None)
        self._add_host(0, 0.0, scaled - start + time.perf_counter() - gathered, 0.0)
        return state

    def _finish(self, state: _FrameState) -> EncodeResult:
        start = time.perf_counter()
        roles = self.manifest.outputs
        pooled = self._value(state, roles.get("pooled"))
        tokens = self._value(state, roles.get("tokens"))
        embedding = pooled_embedding(pooled, tokens)
        token_rows = token_matrix(tokens) if state.want_tokens and tokens is not None else None
        self._check_output(state, embedding, token_rows)
        done = time.perf_counter()
        self._add_host(0, 0.0, 0.0, done - start)
        return EncodeResult(embedding=embedding, tokens=token_rows, latency_s=done - state.submitted)

    def _check_output(self, state: _FrameState, embedding: np.ndarray, tokens: np.ndarray | None) -> None:
        """Never hand out NaN/inf or a wrong width: an NPU fault or a broken shard fails the frame instead."""
        call, core = state.last_call
        where = f"last shard {self._calls[call].name} on core {core}" if call >= 0 else "no shard ran"
        if embedding.shape != (self.embedding_dim,):
            raise EncoderOutputError(f"the embedding has shape {embedding.shape}, the manifest declares "
                                     f"({self.embedding_dim},) ({where}); the shard set does not match its manifest")
        if not np.isfinite(embedding).all() or (tokens is not None and not np.isfinite(tokens).all()):
            raise EncoderOutputError(f"the shard chain produced values that are not finite (NaN/inf) ({where}); frame "
                                     "dropped. On every frame this means a broken shard set (rebuild it) or a "
                                     "failing NPU core")

    @staticmethod
    def _value(state: _FrameState, name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        value, factor = state.tensors[name]
        array = value.value if isinstance(value, GatherBuffer) else value
        return array if abs(factor - 1.0) <= _UNIT else array * np.float32(factor)

    def _add_host(self, frames: int, preprocess: float, scales: float, postprocess: float) -> None:
        with self._host_lock:
            self._host.frames += frames
            self._host.preprocess_s += preprocess
            self._host.scales_s += scales
            self._host.postprocess_s += postprocess


def _last_uses(manifest: Manifest, stages: list[StageSpec]) -> dict[int, list[str]]:
    """For each stage index, the tensors no later stage (nor the final outputs) needs once it is complete."""
    keep = {name for name in manifest.outputs.values() if name is not None}
    last: dict[str, int] = {manifest.pixel_input.name: 0}
    for index, stage in enumerate(stages):
        shards = [manifest.shard(part.shard) for part in stage.parts]
        for shard in shards:
            for spec in shard.inputs:
                last[spec.name] = index
        produced = [stage.gather] if stage.gather is not None else [spec for s in shards for spec in s.outputs]
        for spec in produced:
            last.setdefault(spec.name, index)
    by_stage: dict[int, list[str]] = {}
    for name, index in last.items():
        if name not in keep:
            by_stage.setdefault(index, []).append(name)
    return by_stage

