"""Per-core workers that keep the NPU's three cores busy at once.

The scheduler knows nothing about images or models: it moves opaque frame states through ``run_shard(shard, core,
state)`` calls and hands the final state to ``finish(state)``. A "shard" here is one call: a whole shard of a chain,
or one part of a stage of parts (``stages``: calls that may run at once). Five modes:

- ``sequential``: one frame at a time, shard k on core k % N (the seed's behaviour: one core busy at any moment).
- ``pipeline``: the shard chain is cut into up to N contiguous stages of balanced cost, one worker thread per core;
  frames flow stage to stage, up to one frame per stage in flight.
- ``replicas``: every core holds the whole chain; N workers pull frames from one queue, so a frame goes to whichever
  core is free.
- ``allcores``: the vendor's latency option: one frame at a time, every shard in one context spanning all the cores
  (core = the tuple of cores; RKNN core mask NPU_CORE_0_1_2). The runtime splits only some ops across the cores
  (on RK3588 the conv-type projections; attention stays on one core), so latency drops by less than N.
- ``split``: the latency mode for stages of parallel parts (the split profile): one frame at a time; each stage's
  parts run on all cores at once (part k on core k % N, one context per core), and the next stage starts when every
  part of this one has returned (the host's all-gather). A failing or stuck part fails the frame.

Admission is bounded (``capacity`` frames in flight; ``submit`` blocks beyond that), results resolve in submission
order, an exception in a shard fails only that frame's future, and ``close`` drains (or cancels) what is in flight
before joining the workers, for at most ``timeout`` seconds: a shard call that never returns (a hung NPU) is left
behind on its daemon thread, named in the log, and the frames it holds fail. In ``replicas`` mode a core whose
frames fail ``retire_after`` times in a row is taken out of rotation while other cores keep serving.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from rk_siglip_ros.errors import RunFailedError
from rk_siglip_ros.runtime.backends.base import Core, core_indices, format_core
from rk_siglip_ros.runtime.partitioning import min_max_partition

MODES = ("sequential", "pipeline", "replicas", "allcores", "split")
# Consecutive failed frames after which a replicas core leaves the rotation (never the last core in rotation).
RETIRE_AFTER = 5
# close() waits this long by default for frames in flight and running shard calls; then it returns regardless.
CLOSE_TIMEOUT_S = 60.0
# A shard call running longer than this is declared stuck (a hung NPU): its frame fails, and in replicas mode its
# core leaves the rotation. Far above any real call (a whole SigLIP-B/16 graph takes about 1.6 s on one NPU core,
# a few seconds on a CPU); None turns the watchdog off.
CALL_TIMEOUT_S = 60.0

LOG = logging.getLogger(__name__)

RunShard = Callable[[int, Core, Any], Any]
Finish = Callable[[Any], Any]


class SchedulerClosedError(RuntimeError):
    """submit() after close(), or a frame still in flight when close() gave up waiting for a stuck call."""


class StuckCallError(RunFailedError, RuntimeError):
    """A frame whose shard call ran longer than the call timeout (a hung NPU call)."""


@dataclass(frozen=True)
class StuckCall:
    """A shard call that had not returned when close() stopped waiting."""

    core: Core
    shard: int
    seconds: float

    def __str__(self) -> str:
        return f"{format_core(self.core)} stuck in shard {self.shard} for {self.seconds:.1f} s"


class BusyWindow:
    """One reader's view of per-core busy time: each :meth:`read` covers the time since this window's previous read,
    so several readers (diagnostics, a benchmark) never reset each other's figures."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._wall, self._busy = scheduler.busy_seconds()

    def read(self) -> dict[int, float]:
        """Fraction of wall time each core spent running shards since the previous read (or creation)."""
        wall, busy = self._scheduler.busy_seconds()
        elapsed = max(wall - self._wall, 1e-9)
        fractions = {core: min(1.0, max(0.0, (busy[core] - self._busy.get(core, 0.0)) / elapsed)) for core in busy}
        self._wall, self._busy = wall, busy
        return fractions


@dataclass(frozen=True)
class ShardEvent:
    """One shard execution, for traces: which frame, which shard, which core, when (perf_counter seconds)."""

    frame: int
    shard: int
    core: Core
    start: float
    end: float


@dataclass
class _Frame:
    index: int
    state: Any
    future: Future
    error: BaseException | None = None
    abandoned: bool = False  # given up by the watchdog: its worker must drop it when (if) the call returns


@dataclass
class _Worker:
    """A thread that runs ``assignment`` (shard index, core) pairs in order on each frame it takes from ``inbox``."""

    name: str
    assignment: list[tuple[int, Core]]
    inbox: queue.Queue
    outbox: queue.Queue | None  # the next stage's inbox; None = this worker finishes frames
    thread: threading.Thread | None = field(default=None, repr=False)


_STOP = object()


def balanced_stages(costs: Sequence[float], stages: int) -> list[list[int]]:
    """Cut shards 0..n-1 into ``min(stages, n)`` contiguous non-empty ranges minimising the costliest range.

    Zero/unknown costs count as equal costs.
    """
    if not costs:
        return []
    weights = [float(c) for c in costs]
    if not any(w > 0 for w in weights):
        weights = [1.0] * len(weights)
    return min_max_partition(weights, max(1, min(stages, len(weights))))


def check_mode(mode: str) -> None:
    """ValueError naming the valid modes unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def plan_workers(mode: str, cores: Sequence[int], costs: Sequence[float],
                 stages: Sequence[Sequence[int]] | None = None) -> list[list[tuple[int, Core]]]:
    """Each worker's (shard, core) assignment for ``mode``. Pipeline workers are listed in stage order; split mode
    has one worker (lane) per core, holding the parts that core runs, in order."""
    check_mode(mode)
    if not cores:
        raise ValueError("at least one core is needed")
    if len(set(cores)) != len(cores):
        raise ValueError(f"cores must be distinct, got {list(cores)}")
    shards = range(len(costs))
    if mode == "sequential":
        return [[(k, cores[k % len(cores)]) for k in shards]]
    if mode == "replicas":
        return [[(k, core) for k in shards] for core in cores]
    if mode == "allcores":
        return [[(k, tuple(cores)) for k in shards]]
    if mode == "split":
        lanes: dict[int, list[tuple[int, Core]]] = {core: [] for core in cores}
        for stage in split_stages(cores, len(costs), stages):
            for shard, core in stage:
                lanes[int(core)].append((shard, core))
        return [lanes[core] for core in cores]
    return [[(k, core) for k in stage] for stage, core in zip(balanced_stages(costs, len(cores)), cores, strict=False)]


def split_stages(cores: Sequence[int], calls: int,
                 stages: Sequence[Sequence[int]] | None) -> list[list[tuple[int, Core]]]:
    """Split mode's (shard, core) pairs per stage: part k of a stage on core k % N (None: one shard per stage)."""
    groups = [list(stage) for stage in stages] if stages is not None else [[k] for k in range(calls)]
    if sorted(k for group in groups for k in group) != list(range(calls)):
        raise ValueError(f"stages {groups} must list every shard 0..{calls - 1} exactly once")
    return [[(shard, cores[k % len(cores)]) for k, shard in enumerate(group)] for group in groups]


class _Latch:
    """Counts a stage's lanes down; holds the first error any of them raised."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._done = threading.Condition()
        self.error: BaseException | None = None

    def count_down(self, error: BaseException | None) -> None:
        with self._done:
            self._count -= 1
            if error is not None and self.error is None:
                self.error = error
            self._done.notify_all()

    def wait(self, frame: _Frame) -> None:
        """Until every lane is done, or the frame was given up (the watchdog, close(), its owner cancelled it)."""
        with self._done:
            while self._count > 0 and not frame.abandoned and not frame.future.done():
                self._done.wait(0.05)


class Scheduler:
    def __init__(self, mode: str, cores: Sequence[int], costs: Sequence[float], run_shard: RunShard,
                 finish: Finish, queue_slots: int = 0, trace: bool = False, retire_after: int = RETIRE_AFTER,
                 call_timeout_s: float | None = CALL_TIMEOUT_S, stages: Sequence[Sequence[int]] | None = None) -> None:
        """``stages``: groups of shard indices (in order) whose calls may run at once; only split mode runs them at
        once, the other modes run the shards in index order."""
        self.mode = mode
        self.cores = tuple(cores)
        self.plan = plan_workers(mode, self.cores, costs, stages)
        self._split_plan = split_stages(self.cores, len(costs), stages) if mode == "split" else []
        self._lanes: dict[int, _Worker] = {}
        self._run_shard = run_shard
        self._finish = finish
        # split runs one frame at a time whatever its number of lanes
        self.capacity = (1 if mode == "split" else len(self.plan)) + max(0, queue_slots)
        self._lock = threading.Lock()
        self._slots = threading.Condition(self._lock)
        self._free = self.capacity
        self._closed = False
        self._next_index = 0
        self._pending: dict[int, _Frame] = {}  # submitted, not yet resolved (by index)
        self._finished: dict[int, _Frame] = {}  # finished out of order, waiting for earlier frames
        self._next_to_resolve = 0
        self._resolve_lock = threading.Lock()
        self._busy = {core: 0.0 for core in self.cores}
        # worker name -> (shard, core, start, frame) of the call it is running now
        self._running: dict[str, tuple[int, int, float, _Frame]] = {}
        self._call_timeout_s = call_timeout_s
        self._hung: set[str] = set()  # workers whose running call (in _running) the watchdog declared stuck
        self._retire_after = max(1, int(retire_after))
        self._failures: dict[int, int] = {}  # replicas core -> consecutive failed frames
        self._retired: dict[int, str] = {}  # core -> why it left the rotation
        self._stuck: list[StuckCall] = []
        self._shard_stats: dict[int, list[float]] = {}  # shard -> [calls, seconds]
        self.trace: deque[ShardEvent] | None = deque(maxlen=100_000) if trace else None
        self._workers = self._start_workers()
        self._default_window = BusyWindow(self)
        if call_timeout_s is not None:
            threading.Thread(target=self._watch, name="siglip-watchdog", daemon=True).start()

    # ------------------------------------------------------------------------------------------------- public

    @property
    def in_flight(self) -> int:
        """Frames submitted and not yet resolved."""
        with self._lock:
            return len(self._pending)

    def submit(self, state: Any, timeout: float | None = None) -> Future:
        """Queue one frame; blocks while ``capacity`` frames are in flight (TimeoutError after ``timeout`` s)."""
        future: Future = Future()
        with self._slots:
            if not self._slots.wait_for(lambda: self._free > 0 or self._closed, timeout):
                raise TimeoutError(f"no free slot within {timeout} s ({self.capacity} frames in flight)")
            if self._closed:
                raise SchedulerClosedError("the encoder is closed")
            self._free -= 1
            frame = _Frame(self._next_index, state, future)
            self._next_index += 1
            self._pending[frame.index] = frame
            # Enqueued under the lock so close() cannot put the stop marker ahead of an admitted frame (whose future
            # would then never resolve). The inbox is unbounded: this put never blocks.
            self._workers[0].inbox.put(frame)
        return future

    def busy_seconds(self) -> tuple[float, dict[int, float]]:
        """(now, seconds each core has spent running shards since start), calls still running included. A counter
        that never resets: readers keep their own marks (see :class:`BusyWindow`)."""
        with self._lock:
            now = time.perf_counter()
            busy = dict(self._busy)
            for _, core, start, _ in self._running.values():
                for one in core_indices(core):  # allcores: one call on every core
                    busy[one] += now - start
        return now, busy

    def busy_window(self) -> BusyWindow:
        """A new per-reader window over :meth:`busy_seconds`."""
        return BusyWindow(self)

    def core_busy(self) -> dict[int, float]:
        """Fraction of wall time each core was busy since the previous ``core_busy()`` call (one shared window;
        a second reader should hold its own :meth:`busy_window`)."""
        return self._default_window.read()

    def retired_cores(self) -> dict[int, str]:
        """Cores taken out of rotation (replicas mode) and why."""
        with self._lock:
            return dict(self._retired)

    def stuck_calls(self) -> list[StuckCall]:
        """Shard calls declared stuck: by the watchdog while running (longer than the call timeout), or by close()
        when it stopped waiting. Durations are as of now for calls still running."""
        now = time.perf_counter()
        with self._lock:
            current = [StuckCall(core, shard, now - start) for name, (shard, core, start, _) in self._running.items()
                       if name in self._hung]
            running = {(call.core, call.shard) for call in current}
            return current + [call for call in self._stuck if (call.core, call.shard) not in running]

    def shard_times(self) -> dict[int, tuple[int, float]]:
        """Per shard: (calls, mean seconds per call) since start."""
        with self._lock:
            return {shard: (int(calls), total / calls) for shard, (calls, total) in sorted(self._shard_stats.items())}

    def close(self, cancel: bool = False, timeout: float | None = CLOSE_TIMEOUT_S) -> list[StuckCall]:
        """Stop accepting frames; finish the ones in flight (or cancel those not yet finished) and join the workers.

        Returns within about ``timeout`` seconds (None: wait for ever) even if a shard call never returns: such a
        call is left on its daemon thread, logged with its core and shard, and returned; the frames still in flight
        then fail with :class:`SchedulerClosedError`.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._slots:
            if self._closed and all(w.thread is None or not w.thread.is_alive() for w in self._workers):
                return []
            self._closed = True
            self._slots.notify_all()
            pending = list(self._pending.values())
        if cancel:
            for frame in pending:
                frame.future.cancel()
        first = self._workers[0]
        for _ in self._workers if self.mode == "replicas" else (None,):
            first.inbox.put(_STOP)
        with self._lock:
            hung = set(self._hung)  # declared stuck by the watchdog already: no point waiting for them
        for worker in self._workers:
            if worker.thread is not None:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                worker.thread.join(0.0 if worker.name in hung else wait)
        alive = [w for w in self._workers if w.thread is not None and w.thread.is_alive()]
        if not alive:
            return []
        return self._abandon(alive)

    def _abandon(self, alive: list[_Worker]) -> list[StuckCall]:
        """close() timed out: name the stuck calls, stop the idle workers, fail every frame still in flight."""
        now = time.perf_counter()
        with self._lock:
            stuck = [StuckCall(core, shard, now - start) for name, (shard, core, start, _) in self._running.items()
                     if any(w.name == name for w in alive)]
            self._stuck = stuck
            pending = list(self._pending.values())
        for call in stuck:
            LOG.error("%s; shutting down without it (its thread and NPU context are left behind)", call)
        for worker in alive:  # workers blocked on an empty inbox (stages behind a stuck one) exit now
            worker.inbox.put(_STOP)
        reason = "; ".join(str(call) for call in stuck) or "workers did not stop in time"
        for frame in pending:
            try:
                frame.future.set_exception(SchedulerClosedError(f"the encoder was closed while this frame was in "
                                                                f"flight ({reason})"))
            except InvalidStateError:  # already resolved or cancelled
                pass
        return stuck

    # ------------------------------------------------------------------------------------------------ workers

    def _start_workers(self) -> list[_Worker]:
        workers: list[_Worker] = []
        if self.mode == "split":
            workers = [_Worker("siglip-split", [], queue.Queue(), None)]  # takes frames; hands parts to the lanes
            workers += [_Worker(f"siglip-core{core}", a, queue.Queue(), None) for core, a in zip(self.cores, self.plan,
                                                                                                  strict=True)]
            self._lanes = dict(zip(self.cores, workers[1:], strict=True))
            targets = [self._coordinate] + [self._lane] * len(self.plan)
            for worker, target in zip(workers, targets, strict=True):
                worker.thread = threading.Thread(target=target, args=(worker,), name=worker.name, daemon=True)
                worker.thread.start()
            return workers
        if self.mode == "replicas":
            shared: queue.Queue = queue.Queue()
            workers = [_Worker(f"siglip-core{a[0][1]}", a, shared, None) for a in self.plan]
        else:
            inboxes = [queue.Queue() for _ in self.plan]
            for index, assignment in enumerate(self.plan):
                outbox = inboxes[index + 1] if index + 1 < len(self.plan) else None
                core = assignment[0][1] if self.mode == "pipeline" else "s"
                workers.append(_Worker(f"siglip-core{core}", assignment, inboxes[index], outbox))
        for worker in workers:
            worker.thread = threading.Thread(target=self._work, args=(worker,), name=worker.name, daemon=True)
            worker.thread.start()
        return workers

    def _work(self, worker: _Worker) -> None:
        while True:
            frame = worker.inbox.get()
            if frame is _STOP:
                if worker.outbox is not None:
                    worker.outbox.put(_STOP)
                return
            try:
                self._run(worker, frame)
            except BaseException as error:  # noqa: BLE001 - a worker never dies; the frame carries the error
                if not frame.abandoned:  # the watchdog's StuckCallError stands for a frame it already failed
                    frame.error = error
            if frame.abandoned:  # the watchdog failed this frame while our call hung; it returned at last
                with self._lock:
                    if worker.assignment[0][1] in self._retired and self.mode == "replicas":
                        return
                continue
            if worker.outbox is not None and frame.error is None and not frame.future.cancelled():
                worker.outbox.put(frame)
                continue
            self._done(frame)
            if self.mode == "replicas" and not frame.future.cancelled() and self._count_outcome(worker, frame.error):
                return  # this core left the rotation; the others keep taking frames from the shared queue

    def _coordinate(self, worker: _Worker) -> None:
        """Split mode: one frame at a time, stage by stage; each stage's parts go to their cores' lanes at once and
        the next stage starts when all have returned. A failed part fails the frame; a stuck one too (watchdog)."""
        while True:
            frame = worker.inbox.get()
            if frame is _STOP:
                for lane in self._lanes.values():
                    lane.inbox.put(_STOP)
                return
            for stage in self._split_plan:
                if frame.future.cancelled() or frame.abandoned or frame.error is not None:
                    break
                by_core: dict[int, list[tuple[int, Core]]] = {}
                for shard, core in stage:
                    by_core.setdefault(int(core), []).append((shard, core))
                latch = _Latch(len(by_core))
                for core, calls in by_core.items():
                    self._lanes[core].inbox.put((frame, calls, latch))
                latch.wait(frame)
                if latch.error is not None and not frame.abandoned:
                    frame.error = latch.error
            if not frame.abandoned:  # the watchdog resolves the frames it gives up
                self._done(frame)

    def _lane(self, worker: _Worker) -> None:
        """Split mode: one core's calls of a stage, in order, then count the stage's latch down."""
        while True:
            item = worker.inbox.get()
            if item is _STOP:
                return
            frame, calls, latch = item
            error = None
            try:
                self._run(worker, frame, calls)
            except BaseException as caught:  # noqa: BLE001 - a lane never dies; the frame carries the error
                error = caught
            latch.count_down(error)

    def _count_outcome(self, worker: _Worker, error: BaseException | None) -> bool:
        """Track a replicas core's consecutive failures; True when it must leave the rotation now."""
        core = worker.assignment[0][1]
        with self._slots:
            if error is None:
                self._failures[core] = 0
                return False
            self._failures[core] = self._failures.get(core, 0) + 1
            if self._failures[core] < self._retire_after or not self._may_retire(core):
                return False
            why = (f"core {core} out of rotation after {self._failures[core]} consecutive failed frames (last: "
                   f"{type(error).__name__}: {error})")
            self._retire(core, why)
        LOG.error("%s; serving on the other cores", why)
        return True

    def _may_retire(self, core: int) -> bool:
        """Whether ``core`` may leave the rotation now: replicas mode, the scheduler open, and another core still
        serving (caller holds the lock)."""
        in_rotation = len(self.cores) - len(self._retired)
        return self.mode == "replicas" and core not in self._retired and in_rotation > 1 and not self._closed

    def _retire(self, core: int, why: str) -> None:
        """Take a replicas core out of rotation (caller holds the lock)."""
        self._retired[core] = why
        self.capacity -= 1  # one worker fewer: admit one frame fewer
        self._free -= 1

    def _watch(self) -> None:
        """Watchdog: fail the frame of a call running longer than the call timeout, so later frames still resolve
        (in order) and, in replicas mode, the other cores keep serving. The hung thread itself cannot be stopped."""
        assert self._call_timeout_s is not None
        period = min(1.0, max(0.01, self._call_timeout_s / 4))
        while True:
            time.sleep(period)
            now = time.perf_counter()
            expired: list[tuple[str, StuckCall, _Frame, bool]] = []
            with self._slots:
                if self._closed:
                    return
                for name, (shard, core, start, frame) in self._running.items():
                    if name in self._hung or now - start <= self._call_timeout_s:
                        continue
                    call = StuckCall(core, shard, now - start)
                    self._hung.add(name)
                    frame.abandoned = True
                    frame.error = StuckCallError(f"{call}, longer than the call timeout of "
                                                 f"{self._call_timeout_s:g} s; frame dropped")
                    retire = self._may_retire(core)
                    if retire:
                        self._retire(core, f"core {core} out of rotation: {call}")
                    expired.append((name, call, frame, retire))
            for _, call, frame, retired in expired:
                LOG.error("%s (call timeout %g s): frame dropped%s", call, self._call_timeout_s,
                          "; core out of rotation, serving on the other cores" if retired else "")
                self._done(frame)

    def _run(self, worker: _Worker, frame: _Frame, calls: list[tuple[int, Core]] | None = None) -> None:
        for shard, core in worker.assignment if calls is None else calls:
            if frame.future.cancelled() or frame.abandoned:
                return
            start = time.perf_counter()
            with self._lock:
                self._running[worker.name] = (shard, core, start, frame)
            try:
                frame.state = self._run_shard(shard, core, frame.state)
            finally:
                end = time.perf_counter()
                self._account(worker.name, frame.index, shard, core, start, end)

    def _account(self, worker: str, frame: int, shard: int, core: Core, start: float, end: float) -> None:
        with self._lock:
            self._running.pop(worker, None)
            self._hung.discard(worker)
            # A context spanning several cores counts as busy on each of them (an upper bound: the runtime splits
            # only some ops across them).
            for one in core_indices(core):
                self._busy[one] += end - start
            stats = self._shard_stats.setdefault(shard, [0, 0.0])
            stats[0] += 1
            stats[1] += end - start
            if self.trace is not None:
                self.trace.append(ShardEvent(frame, shard, core, start, end))

    def _done(self, frame: _Frame) -> None:
        """Frame left the workers: finish it, free its slot, resolve futures in submission order."""
        result = None
        if frame.error is None and not frame.future.cancelled():
            try:
                result = self._finish(frame.state)
            except BaseException as error:  # noqa: BLE001 - post-processing errors belong to the frame too
                frame.error = error
        frame.state = result
        with self._slots:
            self._free += 1
            self._slots.notify()
        with self._resolve_lock:
            self._finished[frame.index] = frame
            while self._next_to_resolve in self._finished:
                ready = self._finished.pop(self._next_to_resolve)
                self._next_to_resolve += 1
                with self._lock:
                    self._pending.pop(ready.index, None)
                if ready.future.cancelled():
                    continue
                try:
                    if ready.error is not None:
                        ready.future.set_exception(ready.error)
                    else:
                        ready.future.set_result(ready.state)
                except InvalidStateError:  # cancelled by its owner a moment ago
                    pass
