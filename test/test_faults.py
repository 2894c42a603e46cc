"""Failing shards, stuck calls and failing cores: real ONNX Runtime runners on the toy shard chain, with
faults injected by wrapping them (backends.faults), never by replacing the encoder or the scheduler."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest
from fault_backends import FaultInjectingBackend, InjectedFaultError
from test_manifest import TOY_DIM, write_toy_shards

from rk_siglip_ros.manifest import load_manifest
from rk_siglip_ros.runtime.backends import create_backend
from rk_siglip_ros.runtime.backends.sim import SimBackend
from rk_siglip_ros.runtime.encoder import EncoderOutputError, SiglipEncoder
from rk_siglip_ros.runtime.scheduler import SchedulerClosedError, StuckCallError

MODES = ("sequential", "pipeline", "replicas")


@pytest.fixture(scope="module")
def toy_manifest(tmp_path_factory):
    return load_manifest(write_toy_shards(tmp_path_factory.mktemp("faults") / "toy"))


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)


def faulty_encoder(manifest, kind: str, mode: str = "pipeline", **fault) -> tuple[SiglipEncoder, FaultInjectingBackend]:
    backend = FaultInjectingBackend(create_backend("onnxruntime", threads=1), kind, **fault)
    return SiglipEncoder(manifest, backend, mode=mode), backend


@pytest.mark.parametrize("mode", MODES)
def test_nan_from_a_shard_fails_the_frame_instead_of_returning_nan(toy_manifest, mode):
    encoder, _ = faulty_encoder(toy_manifest, "nan", mode)
    with encoder:
        with pytest.raises(EncoderOutputError, match="NaN/inf.*last shard head on core"):
            encoder.encode(image())


def test_nan_in_the_tokens_alone_fails_the_frame_too(toy_manifest):
    encoder, _ = faulty_encoder(toy_manifest, "nan", shard=1)  # the block shard: tokens NaN, pooled NaN too
    with encoder, pytest.raises(EncoderOutputError):
        encoder.submit(image(), tokens=True).result()


def test_a_final_output_of_the_wrong_width_fails_the_frame(toy_manifest):
    encoder, _ = faulty_encoder(toy_manifest, "shape")
    with encoder:
        with pytest.raises(EncoderOutputError, match=rf"declares \({TOY_DIM},\)"):
            encoder.encode(image())


def test_good_frames_still_pass_the_output_checks(toy_manifest):
    encoder, backend = faulty_encoder(toy_manifest, "nan", rate=0.0)
    with encoder:
        vector = encoder.encode(image())
    assert vector.shape == (TOY_DIM,) and np.isfinite(vector).all() and backend.injected == 0


@pytest.mark.parametrize("mode", MODES)
def test_close_returns_in_bounded_time_with_a_stuck_call_and_names_the_core(toy_manifest, mode, caplog):
    encoder, backend = faulty_encoder(toy_manifest, "stuck", mode, shard=1)
    try:
        future = encoder.submit(image())
        deadline = time.monotonic() + 10
        while not encoder.scheduler.busy_seconds()[1] or backend.injected == 0:
            assert time.monotonic() < deadline, "the stuck call never started"
            time.sleep(0.01)
        started = time.monotonic()
        stuck = encoder.close(cancel=True, timeout=0.5)
        took = time.monotonic() - started
        assert took < 0.5 + 1.0, f"close took {took:.2f} s with a 0.5 s timeout"
        assert [(call.shard, call.core) for call in stuck] == [(1, stuck[0].core)]
        assert "stuck in shard 1" in caplog.text
        with pytest.raises((SchedulerClosedError, CancelledError)):
            future.result(timeout=1)
    finally:
        backend.release()


def test_close_releases_every_runner_even_when_one_close_raises(toy_manifest, caplog):
    backend = FaultInjectingBackend(create_backend("onnxruntime", threads=1), "raise", rate=0.0, close_error=True)
    encoder = SiglipEncoder(toy_manifest, backend, mode="replicas")
    real = [runner._real for runner in encoder._runners.values()]
    encoder.close()
    assert all(runner._session is None for runner in real), "a runner after the failing one was not released"
    assert caplog.text.count("injected close() failure") == len(real)


def test_two_busy_readers_do_not_steal_each_others_window():
    from test_scheduler import sim_encoder

    with sim_encoder("pipeline", shards=3, ms_per_shard=20.0) as encoder:
        diagnostics, bench = encoder.busy_window(), encoder.busy_window()
        encoder.encode_batch([image(i) for i in range(6)])
        first = diagnostics.read()
        second = bench.read()
    assert max(first.values()) > 0.2
    assert max(second.values()) > 0.2, "reading one window reset the other"


def test_busy_counter_includes_a_call_still_running(toy_manifest):
    encoder, backend = faulty_encoder(toy_manifest, "stuck", "sequential", shard=0)
    try:
        encoder.submit(image())
        time.sleep(0.3)
        _, busy = encoder.scheduler.busy_seconds()
        assert max(busy.values()) >= 0.25
    finally:
        backend.release()
        encoder.close()


def encode_until(encoder: SiglipEncoder, done, limit: int = 300) -> list[bool]:
    """Encode frames one by one until ``done()``; True per frame that succeeded."""
    outcomes = []
    while not done():
        assert len(outcomes) < limit, f"condition not reached after {limit} frames"
        try:
            encoder.encode(image(len(outcomes)))
            outcomes.append(True)
        except InjectedFaultError:
            outcomes.append(False)
    return outcomes


def test_replicas_take_a_failing_core_out_of_rotation_and_keep_serving(toy_manifest, caplog):
    encoder, _ = faulty_encoder(toy_manifest, "raise", "replicas", cores={1})
    with encoder:
        outcomes = encode_until(encoder, lambda: bool(encoder.retired_cores()))
        after = [encoder.encode(image(index)) for index in range(20)]  # would raise on core 1
        retired, capacity = encoder.retired_cores(), encoder.capacity
    assert list(retired) == [1] and "core 1 out of rotation after 5 consecutive" in retired[1]
    assert outcomes.count(False) == 5 and len(after) == 20
    assert capacity == 2
    assert caplog.text.count("core 1 out of rotation") == 1


def test_the_last_core_in_rotation_is_never_retired(toy_manifest):
    encoder, _ = faulty_encoder(toy_manifest, "raise", "replicas")
    with encoder:
        encode_until(encoder, lambda: len(encoder.retired_cores()) == 2)
        for index in range(10):  # 10 more failures on the last core: it stays
            with pytest.raises(InjectedFaultError):
                encoder.encode(image(index))
        assert len(encoder.retired_cores()) == 2 and encoder.capacity == 1


def test_a_stuck_sim_call_is_bounded_too():
    """The sim backend sleeps like an NPU call (GIL released): the same bound holds."""
    from test_scheduler import sim_manifest

    backend = FaultInjectingBackend(SimBackend({"name": "flat", "per_call_ms": 0.0, "dense_ms_per_gmac": 1.0}),
                                    "stuck", shard=0)
    encoder = SiglipEncoder(sim_manifest([1.0] * 3), backend, mode="pipeline")
    try:
        encoder.submit(image())
        time.sleep(0.05)
        done = threading.Event()
        threading.Thread(target=lambda: (encoder.close(timeout=0.3), done.set()), daemon=True).start()
        assert done.wait(3.0), "close() did not return with a stuck call"
    finally:
        backend.release()


# ------------------------------------------------------------------------------------------------ call watchdog


def test_replicas_keep_serving_when_a_call_hangs_and_retire_that_core(toy_manifest, caplog):
    backend = FaultInjectingBackend(create_backend("onnxruntime", threads=1), "stuck", cores={1})
    encoder = SiglipEncoder(toy_manifest, backend, mode="replicas", call_timeout_s=0.3)
    try:
        outcomes = []
        while not any(isinstance(outcome, StuckCallError) for outcome in outcomes):  # until a frame lands on core 1
            assert len(outcomes) < 200, "no frame reached core 1"
            try:
                outcomes.append(encoder.submit(image(len(outcomes))).result(timeout=30))
            except StuckCallError as error:
                outcomes.append(error)
        later = encoder.encode_batch([image(index) for index in range(10)])  # served by cores 0 and 2
        stuck, retired = encoder.stuck_calls(), encoder.retired_cores()
    finally:
        backend.release()
        encoder.close()
    assert sum(isinstance(outcome, StuckCallError) for outcome in outcomes) == 1
    assert later.shape == (10, TOY_DIM) and np.isfinite(later).all()
    assert [call.core for call in stuck] == [1] and list(retired) == [1] and "stuck in shard" in retired[1]
    assert "core 1 stuck in shard" in caplog.text


def test_a_hung_pipeline_call_fails_its_frame_instead_of_hanging_for_ever(toy_manifest):
    backend = FaultInjectingBackend(create_backend("onnxruntime", threads=1), "stuck", shard=1, rate=1.0)
    encoder = SiglipEncoder(toy_manifest, backend, mode="pipeline", call_timeout_s=0.3)
    try:
        with pytest.raises(StuckCallError, match=r"stuck in shard 1 .* longer than the call timeout of 0.3 s"):
            encoder.submit(image()).result(timeout=30)
        assert encoder.stuck_calls() and encoder.retired_cores() == {}  # a pipeline stage cannot be routed around
    finally:
        backend.release()
        encoder.close()
