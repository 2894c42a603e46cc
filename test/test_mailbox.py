"""The newest-frame mailboxes and round-robin dispatcher, driven step by step with an injected clock.

The encoder here is a deterministic stand-in whose frames finish when the test says so (it is the dispatcher's
collaborator, not the thing under test); the real SiglipEncoder drives the dispatcher in test_node_service.py.
"""

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from outboxes import wait_until
from rosbags.typesys import Stores, get_typestore

from rk_siglip_ros.node.camera_cdr import camera_deserializer
from rk_siglip_ros.node.mailbox import Dispatcher, PendingFrame

CAMERAS = ("/cam0/image_raw", "/cam1/image_raw", "/cam2/image_raw/compressed")


@dataclass
class Result:
    embedding: np.ndarray
    latency_s: float = 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ManualEncoder:
    """Holds each submitted frame until the test completes it; finishing takes `service_s` of the fake clock."""

    def __init__(self, capacity: int, clock: Clock | None = None, service_s: float = 0.0) -> None:
        self.capacity = capacity
        self.clock, self.service_s = clock, service_s
        self.jobs: list[tuple[float, np.ndarray, Future]] = []  # (due time, image, future)
        self.submitted: list[np.ndarray] = []
        self.max_in_flight = 0

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    def submit(self, image: np.ndarray, tokens: bool = False) -> Future:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        if len(self.jobs) >= self.capacity:
            raise AssertionError("dispatcher submitted beyond the encoder's capacity")
        future: Future = Future()
        due = (self.clock.now if self.clock else 0.0) + self.service_s
        self.jobs.append((due, image, future))
        self.submitted.append(image)
        self.max_in_flight = max(self.max_in_flight, len(self.jobs))
        return future

    def complete(self, count: int = 1, error: Exception | None = None) -> None:
        for _ in range(count):
            _, image, future = self.jobs.pop(0)
            if error is None:
                future.set_result(Result(embedding=image.reshape(-1)[:4].astype(np.float32)))
            else:
                future.set_exception(error)

    def complete_due(self) -> int:
        due = [job for job in self.jobs if job[0] <= self.clock.now + 1e-12]
        for job in due:
            self.jobs.remove(job)
            job[2].set_result(Result(embedding=job[1].reshape(-1)[:4].astype(np.float32)))
        return len(due)


def frame_message(camera_index: int, sequence: int) -> np.ndarray:
    """A tiny image whose pixels say which camera and which frame it is."""
    return np.full((2, 2, 3), 0, np.uint8) + np.array([camera_index, sequence % 256, sequence // 256], np.uint8)


def identity(message: np.ndarray) -> np.ndarray:
    return message


class Published:
    def __init__(self) -> None:
        self.frames: list[tuple[PendingFrame, Result]] = []

    def __call__(self, frame: PendingFrame, result: Result) -> float:
        self.frames.append((frame, result))
        return 0.01

    def cameras(self) -> list[str]:
        return [frame.camera for frame, _ in self.frames]


def make(capacity: int, clock: Clock | None = None, service_s: float = 0.0, **kwargs):
    clock = clock or Clock()
    encoder = ManualEncoder(capacity, clock, service_s)
    published = Published()
    dispatcher = Dispatcher(encoder, published, cameras=CAMERAS, convert=identity, clock=clock, **kwargs)
    return dispatcher, encoder, published, clock


def test_newest_frame_is_kept_and_replaced_frames_count_as_busy_drops():
    dispatcher, encoder, published, _ = make(capacity=1)
    dispatcher.offer(CAMERAS[0], frame_message(0, 1))
    assert dispatcher.pump() == 1
    for sequence in (2, 3, 4):  # the encoder is full: these wait in the one-slot mailbox, newest wins
        dispatcher.offer(CAMERAS[0], frame_message(0, sequence))
        assert dispatcher.pump() == 0
    encoder.complete()
    assert dispatcher.pump() == 1
    assert [image[0, 0, 1] for image in encoder.submitted] == [1, 4]
    assert len(published.frames) == 1 and published.frames[0][0].message[0, 0, 1] == 1
    totals = dispatcher.stats.totals()
    assert totals["received"] == 4 and totals["dropped_busy"] == 2 and totals["published"] == 1


def test_round_robin_is_fair_across_three_cameras():
    dispatcher, encoder, published, _ = make(capacity=1)
    for tick in range(300):
        for index, camera in enumerate(CAMERAS):
            dispatcher.offer(camera, frame_message(index, tick))
        dispatcher.pump()
        encoder.complete()
    dispatcher.pump()
    counts = [published.cameras().count(camera) for camera in CAMERAS]
    assert sum(counts) == 300
    assert max(counts) - min(counts) <= 1, counts
    # Strict rotation, not merely equal totals: no camera is served twice while another one waits.
    assert published.cameras()[:6] == list(CAMERAS) * 2


def test_a_quiet_camera_does_not_slow_the_others():
    dispatcher, encoder, published, _ = make(capacity=1)
    for tick in range(60):
        dispatcher.offer(CAMERAS[0], frame_message(0, tick))
        if tick % 10 == 0:
            dispatcher.offer(CAMERAS[1], frame_message(1, tick))
        dispatcher.pump()
        encoder.complete()
    dispatcher.pump()
    cameras = published.cameras()
    assert cameras.count(CAMERAS[1]) == 6
    assert cameras.count(CAMERAS[0]) == 60 - 6  # every slot the quiet camera does not use goes to the busy one


def test_no_backlog_under_ten_times_overload_and_every_core_stays_busy():
    """3 cameras, a 3-deep encoder (3 pipeline stages), frames arriving 10x faster than it can encode them."""
    capacity, service_s = 3, 0.3  # each frame takes 0.3 s; 3 in flight -> 10 frames/s in total
    frame_period = 1.0 / (10 * 10 / len(CAMERAS))  # every camera alone sends 10x its share
    dispatcher, encoder, published, clock = make(capacity, service_s=service_s)
    step = frame_period / 4
    next_frame, sequence, ages, busy_steps, steps = 0.0, 0, [], 0, 0
    while clock.now < 30.0:
        if clock.now >= next_frame - 1e-12:
            for index, camera in enumerate(CAMERAS):
                dispatcher.offer(camera, frame_message(index, sequence))
            sequence += 1
            next_frame += frame_period
        encoder.complete_due()
        before = len(published.frames)
        dispatcher.pump()
        ages += [clock.now - frame.arrived for frame, _ in published.frames[before:]]
        if clock.now > 1.0:
            steps += 1
            busy_steps += encoder.in_flight == capacity
        clock.now = round(clock.now + step, 9)

    assert encoder.max_in_flight == capacity
    # No queue: each published frame waited at most one frame period in its mailbox, plus its own encode.
    assert max(ages) <= service_s + frame_period + step + 1e-9, max(ages)
    # The encoder never idles while frames wait: all 3 slots are full at every step after the start.
    assert busy_steps == steps
    # Throughput is the encoder's, and the cameras share it equally.
    counts = [published.cameras().count(camera) for camera in CAMERAS]
    assert sum(counts) >= (30.0 - 1.0) * capacity / service_s
    assert max(counts) - min(counts) <= 1, counts
    totals = dispatcher.stats.totals()
    pending = sum(dispatcher.pending().values())
    assert totals["received"] == totals["published"] + totals["dropped_busy"] + encoder.in_flight + pending


def test_rate_limit_takes_the_newest_frame_at_the_allowed_rate():
    dispatcher, encoder, published, clock = make(capacity=3, max_rate_hz=10.0)
    submit_times = []
    for tick in range(90):  # 3 s of a 30 Hz camera, limited to 10 Hz
        clock.now = tick / 30.0
        dispatcher.offer(CAMERAS[0], frame_message(0, tick))
        if dispatcher.pump():
            submit_times.append(clock.now)
        encoder.complete(encoder.in_flight)
    assert len(submit_times) == 30
    assert min(np.diff(submit_times)) >= 0.1 - 1e-9
    # The submitted frame is always the newest one at that moment (arrived at the submit time).
    assert len(published.frames) >= 29  # the last one finished after the final pump
    pairs = zip(published.frames, submit_times[: len(published.frames)], strict=True)
    assert all(frame.arrived == pytest.approx(t) for (frame, _), t in pairs)
    totals = dispatcher.stats.totals()
    assert totals["dropped_rate_limit"] == 90 - 30 - sum(dispatcher.pending().values())
    assert totals.get("dropped_busy", 0) == 0


def test_rate_limited_frame_waits_for_its_time_instead_of_being_lost():
    dispatcher, encoder, published, clock = make(capacity=3, max_rate_hz=2.0)
    dispatcher.offer(CAMERAS[0], frame_message(0, 0))
    assert dispatcher.pump() == 1
    clock.now = 0.1
    dispatcher.offer(CAMERAS[0], frame_message(0, 1))  # too early: deferred, not dropped
    assert dispatcher.pump() == 0
    assert dispatcher.next_eligible_time() == pytest.approx(0.5)
    clock.now = 0.5
    assert dispatcher.pump() == 1
    assert encoder.submitted[-1][0, 0, 1] == 1
    assert dispatcher.stats.totals().get("dropped_rate_limit", 0) == 0


def test_rate_limit_is_per_camera():
    dispatcher, encoder, published, clock = make(capacity=3, max_rate_hz=1.0)
    for index, camera in enumerate(CAMERAS):
        dispatcher.offer(camera, frame_message(index, 0))
    assert dispatcher.pump() == 3  # one camera's limit does not hold back the others


def test_max_rate_must_be_finite_and_not_negative():
    dispatcher, *_ = make(capacity=1)
    with pytest.raises(ValueError, match="max_rate_hz"):
        dispatcher.set_max_rate(-1.0)
    with pytest.raises(ValueError, match="max_rate_hz"):
        dispatcher.set_max_rate(float("nan"))
    with pytest.raises(ValueError, match="max_rate_hz"):  # refused at node start too: one rule for both
        dispatcher.set_max_rate(float("inf"))


# ------------------------------------------------------------------------------------------- bad frames


@pytest.fixture(scope="module")
def image_types():
    return get_typestore(Stores.ROS2_JAZZY).types


def good_image(types, value: int):
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=value, nanosec=0),
                                          frame_id="cam")
    return types["sensor_msgs/msg/Image"](header=header, height=4, width=4, encoding="rgb8", is_bigendian=0,
                                          step=12, data=np.full(48, value, np.uint8))


def bad_images(types):
    unknown = good_image(types, 1)
    unknown.encoding = "foo"
    short = good_image(types, 2)
    short.data = short.data[:-1]
    empty = good_image(types, 3)
    empty.height, empty.width, empty.step, empty.data = 0, 0, 0, np.zeros(0, np.uint8)
    header = good_image(types, 4).header
    jpeg = types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg",
                                                    data=np.frombuffer(b"\xff\xd8garbage" * 9, np.uint8))
    return {"unknown encoding 'foo'": unknown, "shorter than step": short, "zero-size": empty,
            "corrupt compressed image": jpeg}


def test_bad_frames_are_counted_reported_and_skipped(image_types):
    problems = []
    encoder = ManualEncoder(capacity=1)
    published = Published()
    dispatcher = Dispatcher(encoder, published, cameras=CAMERAS[:2], clock=Clock(),  # the real conversion
                            on_bad_frame=lambda frame, reason: problems.append((frame.camera, reason)))
    for expected_reason, bad in bad_images(image_types).items():
        dispatcher.offer(CAMERAS[0], bad)
        dispatcher.offer(CAMERAS[1], good_image(image_types, 200))
        assert dispatcher.pump() == 1  # the bad frame gave its slot to the good one
        encoder.complete()
        assert problems[-1][0] == CAMERAS[0] and expected_reason in problems[-1][1]
    dispatcher.pump()
    assert len(problems) == 4
    assert published.cameras() == [CAMERAS[1]] * 4
    assert all(int(result.embedding[0]) == 200 for _, result in published.frames)
    assert dispatcher.stats.totals()["bad_frames"] == 4
    assert any(key == "last bad frame" and CAMERAS[0] in value for key, value in dispatcher.stats.report().values)


# ------------------------------------------------------------------------------------ serialized frames (raw=True)


class CountingDeserializer:
    """The node's deserialiser for sensor_msgs/Image (camera_cdr), counting the messages it was asked to read."""

    def __init__(self) -> None:
        self.deserialize, self.calls = camera_deserializer("sensor_msgs/msg/Image"), 0

    def __call__(self, raw: bytes):
        self.calls += 1
        return self.deserialize(raw)


def serialized_image(typestore, value: int) -> bytes:
    return bytes(typestore.serialize_cdr(good_image(typestore.types, value), "sensor_msgs/msg/Image"))


def test_serialized_frames_are_deserialised_only_when_dispatched():
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    deserialize = CountingDeserializer()
    encoder = ManualEncoder(capacity=1)
    published = Published()
    dispatcher = Dispatcher(encoder, published, cameras=CAMERAS[:1], clock=Clock(),  # the real conversion
                            deserialize={CAMERAS[0]: deserialize})
    for value in range(1, 11):  # ten frames while the encoder holds the first: the mailbox keeps the newest bytes
        dispatcher.offer(CAMERAS[0], serialized_image(typestore, value))
        dispatcher.pump()
    assert deserialize.calls == 1
    encoder.complete()
    dispatcher.pump()
    encoder.complete()
    dispatcher.pump()
    assert deserialize.calls == 2  # frames 1 and 10; the eight replaced ones were never deserialised
    assert dispatcher.stats.totals()["dropped_busy"] == 8
    # The published frames carry the deserialised message: its header gives the stamp for latency and output.
    assert [frame.message.header.stamp.sec for frame, _ in published.frames] == [1, 10]
    assert [int(result.embedding[0]) for _, result in published.frames] == [1, 10]


def test_bytes_that_do_not_deserialise_are_a_bad_frame_not_an_encoder_error():
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    problems, errors = [], []
    encoder = ManualEncoder(capacity=1)
    published = Published()
    dispatcher = Dispatcher(encoder, published, cameras=CAMERAS[:2], clock=Clock(),
                            deserialize={camera: CountingDeserializer() for camera in CAMERAS[:2]},
                            on_bad_frame=lambda frame, reason: problems.append((frame.camera, reason)),
                            on_error=lambda frame, reason: errors.append(reason))
    good = serialized_image(typestore, 7)
    dispatcher.offer(CAMERAS[0], good[: len(good) // 2])  # truncated CDR
    dispatcher.offer(CAMERAS[1], good)
    assert dispatcher.pump() == 1  # the bad frame gave its encoder slot to the good one
    encoder.complete()
    dispatcher.pump()
    assert errors == []
    assert len(problems) == 1 and problems[0][0] == CAMERAS[0]
    assert "cannot deserialise the message" in problems[0][1]
    assert published.cameras() == [CAMERAS[1]]
    totals = dispatcher.stats.totals()
    assert totals["bad_frames"] == 1 and "errors" not in totals


def test_encoder_errors_are_counted_and_the_next_frame_is_served():
    errors = []
    clock = Clock()
    encoder = ManualEncoder(capacity=1)
    published = Published()
    dispatcher = Dispatcher(encoder, published, cameras=CAMERAS, convert=identity, clock=clock,
                            on_error=lambda frame, reason: errors.append((frame.camera, reason)))
    dispatcher.offer(CAMERAS[0], frame_message(0, 0))
    dispatcher.pump()
    encoder.complete(error=RuntimeError("NPU timeout"))
    dispatcher.offer(CAMERAS[1], frame_message(1, 0))
    dispatcher.pump()
    encoder.complete()
    dispatcher.pump()
    assert errors == [(CAMERAS[0], "encoder failed: RuntimeError: NPU timeout")]
    assert published.cameras() == [CAMERAS[1]]
    dispatcher.offer(CAMERAS[2], np.zeros((2, 2), np.uint8))  # submit refuses a 2-D image with ValueError
    assert dispatcher.pump() == 0
    assert dispatcher.stats.totals()["errors"] == 2 and dispatcher.in_flight == 0


def test_a_failing_publisher_does_not_stop_the_dispatcher():
    calls = []

    def publish(frame, result):
        calls.append(frame.camera)
        if len(calls) == 1:
            raise RuntimeError("context is shut down")
        return None

    encoder = ManualEncoder(capacity=1)
    dispatcher = Dispatcher(encoder, publish, cameras=CAMERAS, convert=identity, clock=Clock(),
                            on_error=lambda frame, reason: None)
    for index in range(2):
        dispatcher.offer(CAMERAS[index], frame_message(index, 0))
        dispatcher.pump()
        encoder.complete()
    dispatcher.pump()
    assert calls == [CAMERAS[0], CAMERAS[1]]
    totals = dispatcher.stats.totals()
    assert totals["errors"] == 1 and totals["published"] == 1


# --------------------------------------------------------------------------------------------- thread




class ThreadedEncoder:
    """Finishes frames on worker threads, like the real scheduler."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pool = ThreadPoolExecutor(capacity)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, image: np.ndarray, tokens: bool = False) -> Future:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

        def encode() -> Result:
            self.release.wait()
            with self._lock:
                self._in_flight -= 1
            return Result(embedding=image.reshape(-1)[:4].astype(np.float32))

        return self._pool.submit(encode)

    def close(self) -> None:
        self._pool.shutdown()


def started_dispatcher(encoder: ThreadedEncoder) -> tuple[Published, Dispatcher]:
    """A running dispatcher over ``encoder`` with one frame offered per camera."""
    published = Published()
    dispatcher = Dispatcher(encoder, published, cameras=CAMERAS, convert=identity)
    dispatcher.start()
    for index, camera in enumerate(CAMERAS):
        dispatcher.offer(camera, frame_message(index, 0))
    return published, dispatcher


def test_thread_serves_all_cameras_and_stop_drains_frames_in_flight():
    encoder = ThreadedEncoder(capacity=3)
    published, dispatcher = started_dispatcher(encoder)
    try:
        assert wait_until(lambda: dispatcher.in_flight == 3), "the thread did not submit one frame per camera"
        for sequence in range(1, 50):  # the encoder is full: these replace each other in the mailboxes
            for index, camera in enumerate(CAMERAS):
                dispatcher.offer(camera, frame_message(index, sequence))
        encoder.release.set()
    finally:
        dispatcher.stop(drain=True, timeout=30.0)
        encoder.close()
    totals = dispatcher.stats.totals()
    # Every frame is accounted for: published, replaced while waiting, or dropped at shutdown; none is lost.
    assert totals["received"] == 150
    assert totals["published"] + totals.get("dropped_busy", 0) + totals.get("dropped_shutdown", 0) == 150
    # The three frames in flight when stop() was called were finished and published, one per camera.
    assert totals["published"] >= 3 and set(published.cameras()) == set(CAMERAS)
    assert encoder.max_in_flight <= 3 and dispatcher.in_flight == 0


def test_stop_without_drain_drops_frames_in_flight():
    encoder = ThreadedEncoder(capacity=2)
    published, dispatcher = started_dispatcher(encoder)
    done = threading.Event()
    threading.Thread(target=lambda: (dispatcher.stop(drain=False), done.set()), daemon=True).start()
    assert done.wait(30.0), "stop(drain=False) must not wait for the encoder"
    encoder.release.set()
    encoder.close()
    totals = dispatcher.stats.totals()
    assert published.frames == [] and totals.get("published", 0) == 0
    assert totals["dropped_shutdown"] + totals.get("dropped_busy", 0) == 3
    dispatcher.offer(CAMERAS[0], frame_message(0, 1))  # after stop: dropped, not stored
    assert dispatcher.stats.totals()["dropped_shutdown"] == totals["dropped_shutdown"] + 1


def test_frames_arriving_before_the_encoder_has_room_are_not_lost_with_a_thread():
    """The thread wakes on a finished frame, not only on a new one."""
    encoder = ThreadedEncoder(capacity=1)
    published, dispatcher = started_dispatcher(encoder)
    try:
        encoder.release.set()
        # No new frames arrive: the two waiting ones must still go through as the first finishes.
        wait_until(lambda: len(published.frames) == 3)
    finally:
        dispatcher.stop(drain=True, timeout=30.0)
        encoder.close()
    assert sorted(published.cameras()) == sorted(CAMERAS)


def test_rate_limit_can_change_while_running():
    dispatcher, encoder, published, clock = make(capacity=3, max_rate_hz=1.0)
    dispatcher.offer(CAMERAS[0], frame_message(0, 0))
    assert dispatcher.pump() == 1
    clock.now = 0.2
    dispatcher.offer(CAMERAS[0], frame_message(0, 1))
    assert dispatcher.pump() == 0  # 1 Hz: not before t = 1
    dispatcher.set_max_rate(5.0)
    assert dispatcher.pump() == 1  # 5 Hz: t = 0.2 is already allowed
    dispatcher.set_max_rate(0.0)
    dispatcher.offer(CAMERAS[0], frame_message(0, 2))
    assert dispatcher.pump() == 1  # unlimited


def test_a_full_encoder_with_a_rate_limit_does_not_spin_the_dispatcher():
    """With the encoder full the dispatcher sleeps until a frame finishes, even when a rate-limited camera's turn
    has come: it used to wake every millisecond (each wake-up taking the lock the subscription callbacks need)."""
    clock_reads = []

    def counting_clock() -> float:
        clock_reads.append(None)
        return time.monotonic()

    encoder = ManualEncoder(1, Clock(), 0.0)
    dispatcher = Dispatcher(encoder, Published(), cameras=CAMERAS, convert=identity, clock=counting_clock,
                            max_rate_hz=1000.0)
    dispatcher.start()
    try:
        dispatcher.offer(CAMERAS[0], frame_message(0, 1))
        assert wait_until(lambda: len(encoder.jobs) == 1)  # the encoder is full now
        dispatcher.offer(CAMERAS[0], frame_message(0, 2))  # its 1 ms rate period passes at once; no room though
        time.sleep(0.01)
        dispatcher.set_max_rate(1000.0)  # whatever wakes the thread now (here a rate change) must not start a spin
        time.sleep(0.01)
        before = len(clock_reads)
        time.sleep(0.3)
        assert len(clock_reads) - before < 20  # a 1 kHz spin would read the clock hundreds of times
        encoder.complete()
        assert wait_until(lambda: len(encoder.jobs) == 1 and len(encoder.submitted) == 2)
    finally:
        dispatcher.stop(drain=False, timeout=5.0)
