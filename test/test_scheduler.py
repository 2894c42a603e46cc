"""The three-core scheduler, driven by the sim backend (real sleeps that release the GIL, as RKNNLite.inference
does) on in-memory manifests: concurrency, throughput against sequential, order, per-frame errors, shutdown."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from rk_siglip_ros.manifest import Manifest, ModelInfo, PreprocessSpec, ShardSpec, TensorSpec
from rk_siglip_ros.runtime.backends.sim import SimBackend
from rk_siglip_ros.runtime.encoder import SiglipEncoder
from rk_siglip_ros.runtime.scheduler import Scheduler, SchedulerClosedError, balanced_stages, plan_workers

CORES = (0, 1, 2)
TOKENS, WIDTH = 16, 8


def sim_manifest(shard_gmacs: list[float], profile: str = "toy") -> Manifest:
    """A chain of shards with the given MACs (GMAC) and the right shapes; the sim needs no files."""
    hidden = TensorSpec("h0", (1, TOKENS, WIDTH))
    shards = [ShardSpec("s0", [TensorSpec("pixel_values", (1, 3, 16, 16))], [hidden], onnx="s0.onnx",
                        macs=int(shard_gmacs[0] * 1e9))]
    for index, gmac in enumerate(shard_gmacs[1:], start=1):
        out = TensorSpec(f"h{index}", (1, TOKENS, WIDTH))
        shards.append(ShardSpec(f"mlp{index}", [shards[-1].outputs[0]], [out], onnx=f"s{index}.onnx",
                                macs=int(gmac * 1e9)))
    return Manifest(model=ModelInfo("sim", "smolvlm", 16, 4, WIDTH, TOKENS, WIDTH),
                    preprocess=PreprocessSpec(size=(16, 16)), shards=shards,
                    outputs={"pooled": None, "tokens": shards[-1].outputs[0].name}, profile=profile)


def sim_encoder(mode: str, shards: int = 6, ms_per_shard: float = 20.0, **kwargs) -> SiglipEncoder:
    backend = SimBackend({"name": "flat", "per_call_ms": 0.0, "dense_ms_per_gmac": ms_per_shard})
    return SiglipEncoder(sim_manifest([1.0] * shards), backend, mode=mode, cores=CORES, **kwargs)


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)


def concurrency(events) -> int:
    """Largest number of shard executions overlapping in time."""
    edges = sorted([(e.start, 1) for e in events] + [(e.end, -1) for e in events])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def steady_throughput(encoder: SiglipEncoder, frames: int, warmup: int = 3) -> float:
    """Frames/s between the warm-up frame's completion and the last one's (fill and drain excluded)."""
    done: dict[int, float] = {}
    futures = []
    for index in range(frames):
        future = encoder.submit(image(index))
        future.add_done_callback(lambda _, i=index: done.__setitem__(i, time.perf_counter()))
        futures.append(future)
    for future in futures:
        future.result()
    return (frames - 1 - warmup) / (done[frames - 1] - done[warmup])


# --------------------------------------------------------------------------------------------------- planning


def brute_force_best(costs: list[float], stages: int) -> float:
    n, best = len(costs), float("inf")
    for cuts in itertools.combinations(range(1, n), min(stages, n) - 1):
        bounds = (0, *cuts, n)
        best = min(best, max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_balanced_stages_are_contiguous_and_optimal(seed):
    costs = list(np.random.default_rng(seed).uniform(0.1, 5.0, size=9))
    stages = balanced_stages(costs, 3)
    assert [k for stage in stages for k in stage] == list(range(9))
    assert all(stages)
    assert max(sum(costs[k] for k in stage) for stage in stages) == pytest.approx(brute_force_best(costs, 3))


def test_plans_per_mode():
    costs = [1.0] * 6
    assert plan_workers("sequential", CORES, costs) == [[(k, k % 3) for k in range(6)]]
    assert plan_workers("pipeline", CORES, costs) == [[(0, 0), (1, 0)], [(2, 1), (3, 1)], [(4, 2), (5, 2)]]
    assert plan_workers("replicas", CORES, costs) == [[(k, core) for k in range(6)] for core in CORES]
    assert plan_workers("pipeline", CORES, [1.0]) == [[(0, 0)]]  # one shard: one stage, one core
    with pytest.raises(ValueError, match="unknown mode"):
        plan_workers("turbo", CORES, costs)


def test_sim_balances_by_predicted_time_not_shard_count():
    encoder = sim_encoder("pipeline", shards=4)
    encoder.close()
    backend = SimBackend({"per_call_ms": 0.0, "dense_ms_per_gmac": 1.0})
    uneven = SiglipEncoder(sim_manifest([3.0, 1.0, 1.0, 1.0]), backend, mode="pipeline", cores=(0, 1))
    try:
        assert uneven.scheduler.plan == [[(0, 0)], [(1, 1), (2, 1), (3, 1)]]
    finally:
        uneven.close()


# -------------------------------------------------------------------------------------------------- behaviour


def test_sequential_keeps_one_frame_in_flight_and_one_core_busy():
    with sim_encoder("sequential", ms_per_shard=5.0, trace=True) as encoder:
        assert encoder.capacity == 1
        encoder.encode_batch([image(i) for i in range(5)])
        events = list(encoder.scheduler.trace)
    assert concurrency(events) == 1
    assert {(e.shard, e.core) for e in events} == {(k, k % 3) for k in range(6)}
    spans = sorted((min(e.start for e in events if e.frame == f), max(e.end for e in events if e.frame == f))
                   for f in range(5))
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


@pytest.mark.parametrize("mode", ["pipeline", "replicas"])
def test_three_cores_run_at_once(mode):
    with sim_encoder(mode, ms_per_shard=5.0, trace=True) as encoder:
        assert encoder.capacity == 3
        encoder.encode_batch([image(i) for i in range(9)])
        events = list(encoder.scheduler.trace)
        busy = encoder.core_busy()
    assert concurrency(events) == 3
    assert {e.core for e in events} == set(CORES)
    assert all(fraction > 0 for fraction in busy.values())
    for frame in range(9):  # every frame ran every shard exactly once, in chain order
        shards = [e.shard for e in sorted(events, key=lambda e: e.start) if e.frame == frame]
        assert shards == list(range(6))


def test_pipeline_and_replicas_reach_2_7x_sequential_throughput():
    """The bar, in the timing simulation: 3 balanced stages vs one frame at a time.

    Wall-clock rates on a shared 2-CPU machine are noisy (a late thread wake-up costs every mode, sequential most), so
    each mode keeps its best rate over up to three rounds; a scheduler that serialises frames never gets near 2.7x.
    """
    rates = {"sequential": 0.0, "pipeline": 0.0, "replicas": 0.0}
    for _ in range(3):
        for mode in rates:
            with sim_encoder(mode, ms_per_shard=30.0) as encoder:
                rate = steady_throughput(encoder, frames=10 if mode == "sequential" else 21)
            rates[mode] = max(rates[mode], rate)
        if min(rates["pipeline"], rates["replicas"]) >= 2.7 * rates["sequential"]:
            break
    assert rates["pipeline"] >= 2.7 * rates["sequential"], rates
    assert rates["replicas"] >= 2.7 * rates["sequential"], rates


def slow_then_fast(shard: int, core: int, state: dict) -> dict:
    """Frame 0 takes long, later frames are quick: in replicas they finish first."""
    time.sleep(0.15 if state["frame"] == 0 else 0.005)
    if state.get("fail_at") == shard:
        raise RuntimeError(f"shard {shard} failed on frame {state['frame']}")
    state["ran"].append(shard)
    return state


@pytest.mark.parametrize("mode", ["sequential", "pipeline", "replicas"])
def test_results_resolve_in_submission_order(mode):
    scheduler = Scheduler(mode, CORES, [1.0] * 3, slow_then_fast, lambda state: state["frame"])
    order: list[int] = []
    try:
        futures = [scheduler.submit({"frame": i, "ran": []}) for i in range(6)]
        for future in futures:
            future.add_done_callback(lambda f: order.append(f.result()))
        assert [future.result(timeout=10) for future in futures] == list(range(6))
    finally:
        scheduler.close()
    assert order == list(range(6))


@pytest.mark.parametrize("mode", ["sequential", "pipeline", "replicas"])
def test_an_exception_fails_only_its_frame_and_the_workers_keep_serving(mode):
    scheduler = Scheduler(mode, CORES, [1.0] * 3, slow_then_fast, lambda state: list(state["ran"]))
    try:
        futures = [scheduler.submit({"frame": i, "ran": [], "fail_at": 1 if i == 2 else None}) for i in range(5)]
        with pytest.raises(RuntimeError, match="shard 1 failed on frame 2"):
            futures[2].result(timeout=10)
        for index in (0, 1, 3, 4):
            assert futures[index].result(timeout=10) == [0, 1, 2]
        later = scheduler.submit({"frame": 9, "ran": []})
        assert later.result(timeout=10) == [0, 1, 2]
        assert scheduler.in_flight == 0
    finally:
        scheduler.close()


def test_an_error_in_postprocessing_fails_only_its_frame():
    def finish(state):
        if state["frame"] == 1:
            raise ValueError("bad output")
        return state["frame"]
    scheduler = Scheduler("pipeline", CORES, [1.0] * 3, slow_then_fast, finish)
    try:
        futures = [scheduler.submit({"frame": i, "ran": []}) for i in range(3)]
        assert futures[0].result(timeout=10) == 0 and futures[2].result(timeout=10) == 2
        with pytest.raises(ValueError, match="bad output"):
            futures[1].result()
    finally:
        scheduler.close()


@pytest.mark.parametrize("mode", ["sequential", "pipeline", "replicas"])
def test_close_with_frames_in_flight_finishes_them_and_joins(mode):
    encoder = sim_encoder(mode, ms_per_shard=5.0)
    futures = []
    feeder = threading.Thread(target=lambda: futures.extend(encoder.submit(image(i)) for i in range(4)))
    feeder.start()
    feeder.join()
    encoder.close()
    assert all(future.done() and future.result().embedding.shape == (WIDTH,) for future in futures)
    assert not any(t.name.startswith("siglip-core") and t.is_alive() for t in threading.enumerate())
    with pytest.raises(SchedulerClosedError):
        encoder.submit(image())
    encoder.close()  # idempotent


@pytest.mark.parametrize("mode", ["sequential", "pipeline", "replicas"])
def test_close_with_cancel_stops_unfinished_frames_after_their_running_shard(mode):
    """Cancelled frames resolve as cancelled and run no further shard; finished ones keep their results."""
    shards, calls = 3, []
    started = threading.Event()

    def run_shard(shard, core, state):
        calls.append((state, shard))
        started.set()
        time.sleep(0.05)
        return state

    scheduler = Scheduler(mode, CORES, [1.0] * shards, run_shard, lambda state: state)
    futures = [scheduler.submit(index) for index in range(scheduler.capacity)]
    assert started.wait(timeout=10)
    scheduler.close(cancel=True)
    assert all(future.done() for future in futures)
    cancelled = [index for index, future in enumerate(futures) if future.cancelled()]
    assert cancelled, "close(cancel=True) right after submit left no frame to cancel"
    for index, future in enumerate(futures):
        if not future.cancelled():
            assert future.result() == index
    for index in cancelled:  # each cancelled frame finished at most the shard that was running when close() came
        assert len([shard for frame, shard in calls if frame == index]) <= 1
    assert len(calls) < len(futures) * shards


def test_submit_blocks_at_capacity():
    scheduler = Scheduler("replicas", (0, 1), [1.0], lambda s, c, state: time.sleep(0.3) or state, lambda s: s)
    try:
        first = [scheduler.submit(i) for i in range(2)]
        assert scheduler.in_flight == 2
        with pytest.raises(TimeoutError, match="2 frames in flight"):
            scheduler.submit(2, timeout=0.01)
        assert [f.result(timeout=10) for f in first] == [0, 1]
    finally:
        scheduler.close()


def test_a_blocked_submit_is_released_by_close():
    scheduler = Scheduler("sequential", (0,), [1.0], lambda s, c, state: time.sleep(0.2) or state, lambda s: s)
    scheduler.submit(0)
    errors = []

    def blocked():
        try:
            scheduler.submit(1)
        except SchedulerClosedError as error:
            errors.append(error)
    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.05)
    scheduler.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and len(errors) == 1


@pytest.mark.parametrize("mode", ["sequential", "pipeline", "replicas"])
def test_a_frame_admitted_while_close_runs_still_resolves(mode, monkeypatch):
    """close() racing submit(): a frame admitted before close() must reach the workers ahead of the stop marker.

    submit() enqueues while it holds the scheduler's lock, so close() cannot run between admission and enqueue. The
    inbox's put() is held open for a moment while close() is started from another thread: the put must find the lock
    held (the invariant), and the frame must still resolve (what the invariant is for). Were the put moved out of
    the lock, close() would queue its stop marker first in that window and the frame would never resolve."""
    scheduler = Scheduler(mode, CORES, [1.0] * 3, lambda s, c, state: state, lambda state: state)
    inbox = scheduler._workers[0].inbox
    put = inbox.put
    in_put = threading.Event()
    lock_held_during_put = []

    def held_put(item, *args, **kwargs):
        if not in_put.is_set():
            lock_held_during_put.append(scheduler._lock.locked())
            in_put.set()
            time.sleep(0.1)  # the window in which close() would slip in if it could
        put(item, *args, **kwargs)

    monkeypatch.setattr(inbox, "put", held_put)
    futures = []
    submitter = threading.Thread(target=lambda: futures.append(scheduler.submit("frame")))
    submitter.start()
    assert in_put.wait(timeout=10)
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    submitter.join(timeout=10)
    closer.join(timeout=10)
    try:
        assert lock_held_during_put == [True]
        assert len(futures) == 1 and futures[0].result(timeout=5) == "frame"
    finally:
        scheduler.close(cancel=True)


def test_bad_image_is_a_value_error_on_submit():
    with sim_encoder("pipeline", ms_per_shard=1.0) as encoder:
        for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32),
                    np.zeros((0, 8, 3), np.uint8), "image.png"):
            with pytest.raises(ValueError):
                encoder.submit(bad)
        assert encoder.in_flight == 0
        assert encoder.encode(image()).shape == (WIDTH,)


def test_allcores_runs_one_frame_at_a_time_on_one_context_spanning_every_core():
    """The vendor's latency mode: each shard once, on the tuple of cores (RKNN core mask 0-1-2), one frame in flight;
    the sim divides only the op classes its profile splits (here all work is dense: 3x)."""
    assert plan_workers("allcores", CORES, [1.0] * 3) == [[(k, CORES) for k in range(3)]]
    backend = SimBackend({"per_call_ms": 1.0, "dense_ms_per_gmac": 6.0,
                          "all_cores": {"cores": 3, "speedup": {"dense": 3.0, "attention": 1.0}}})
    manifest = sim_manifest([1.0] * 4)
    assert backend.predicted_ms(manifest, manifest.shards[0]) == pytest.approx(7.0)
    assert backend.predicted_ms(manifest, manifest.shards[0], cores=3) == pytest.approx(3.0)
    assert backend.predicted_ms(manifest, manifest.shards[0], cores=2) == pytest.approx(1.0 + 6.0 / 2.0)
    assert backend.load(manifest, manifest.shards[0], CORES).seconds == pytest.approx(0.003)
    with SiglipEncoder(manifest, backend, mode="allcores", cores=CORES, trace=True) as encoder:
        assert encoder.capacity == 1
        encoder.core_busy()
        encoder.encode_batch([image(i) for i in range(3)])
        busy = encoder.core_busy()
        events = list(encoder.scheduler.trace)
    assert concurrency(events) == 1
    assert {e.core for e in events} == {CORES}
    assert [e.shard for e in events] == [0, 1, 2, 3] * 3
    assert busy[0] > 0 and busy[0] == busy[1] == busy[2]  # the one context counts on each core it spans
