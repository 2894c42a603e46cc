"""Newest-frame mailboxes and the round-robin dispatcher that feeds the encoder, ROS-free.

Subscription callbacks only :meth:`Dispatcher.offer` a message: it lands in that camera's one-slot mailbox,
replacing (and counting as dropped) any frame still waiting there. One dispatcher thread does everything else:

* while the encoder has room (fewer frames in flight than ``encoder.capacity``) it takes the waiting frame of the
  next camera in round-robin order, deserialises it (the node subscribes with ``raw=True``: mailboxes hold CDR
  bytes, and a camera's ``deserialize`` callable turns them into a message), converts it to RGB and submits it.
  Only frames that are actually encoded are deserialised and converted: a dropped frame costs the copy DDS made,
  nothing more. Bytes that do not deserialise are a bad frame, like an image that does not convert. So three
  cameras at 30 Hz keep a three-stage pipeline full and never build a queue: a frame either
  goes to the encoder within one service interval or is replaced by a newer one;
* a per-camera ``max_rate_hz`` defers a camera's frame until 1/max_rate after its previous submission (the newest
  frame is taken at that moment; older ones are dropped as ``rate_limit``);
* finished encodes are handed to the ``publish`` callback on this thread, in completion order.

The clock is injectable and :meth:`Dispatcher.pump` does one non-blocking pass, so the policy can be tested step
by step without the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from rk_siglip_ros.messages.camera_frames import BadFrame, image_from_message
from rk_siglip_ros.node.config import check_max_rate
from rk_siglip_ros.node.stats import NodeStats

LOG = logging.getLogger(__name__)
CLOCK_SLACK_S = 1e-6


class FrameEncoder(Protocol):
    """What the dispatcher needs from :class:`rk_siglip_ros.runtime.encoder.SiglipEncoder`."""

    @property
    def capacity(self) -> int: ...

    def submit(self, image: np.ndarray, tokens: bool = False) -> Future: ...


@dataclass(frozen=True)
class PendingFrame:
    """One camera message waiting for, or going through, the encoder.

    ``message`` is what the subscription delivered while the frame waits (serialized CDR bytes for a camera with a
    ``deserialize`` callable); once taken for the encoder it is the deserialised message, so the frames handed to
    ``publish`` carry its header."""

    camera: str
    message: Any
    arrived: float  # dispatcher clock, seconds


# deserialize(cdr_bytes) -> message: for rclpy, deserialize_message bound to the topic's message type.
Deserialize = Callable[[bytes], Any]


# publish(frame, result) -> source stamp to publish latency in seconds (None if unknown)
PublishCallback = Callable[[PendingFrame, Any], "float | None"]
ProblemCallback = Callable[[PendingFrame, str], None]
FailureCallback = Callable[[str], None]
DISPATCHER_KEY = "(dispatcher)"  # where a failed dispatch pass is counted in the stats (not a camera)
RETRY_AFTER_FAILURE_S = 0.05  # a pass that keeps failing must not spin a core


class Dispatcher:
    """Feeds one encoder from per-camera one-slot mailboxes, round robin, within the encoder's capacity."""

    def __init__(self, encoder: FrameEncoder, publish: PublishCallback, *, cameras: Iterable[str] = (),
                 convert: Callable[[Any], np.ndarray] = image_from_message,
                 deserialize: Mapping[str, Deserialize] | None = None, max_rate_hz: float = 0.0,
                 tokens: bool = False, stats: NodeStats | None = None, clock: Callable[[], float] = time.monotonic,
                 on_bad_frame: ProblemCallback | None = None, on_error: ProblemCallback | None = None,
                 on_failure: FailureCallback | None = None) -> None:
        self._encoder = encoder
        self._publish = publish
        self._convert = convert
        self._deserialize = dict(deserialize or {})  # camera -> callable; cameras without one offer messages
        self._tokens = tokens
        self._clock = clock
        self.stats = stats if stats is not None else NodeStats(cameras, clock=clock)
        self._on_bad_frame = on_bad_frame or (lambda frame, reason: LOG.warning("%s: %s", frame.camera, reason))
        self._on_error = on_error or (lambda frame, reason: LOG.error("%s: %s", frame.camera, reason))
        self._on_failure = on_failure or (lambda reason: None)
        self._owner_reports_failures = on_failure is not None
        self._lock = threading.Condition()
        self._max_period = 0.0
        self.set_max_rate(max_rate_hz)
        self._order: list[str] = []  # round-robin order: cameras in the order they were declared / first seen
        self._slots: dict[str, PendingFrame | None] = {}
        self._last_submit: dict[str, float] = {}
        self._cursor = 0
        self._in_flight: dict[Future, PendingFrame] = {}
        self._converting = 0  # frames taken from a mailbox and not yet submitted: they hold an encoder slot
        self._completed: deque[tuple[PendingFrame, Future]] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        for camera in cameras:
            self._add_camera(camera)

    # --------------------------------------------------------------------------------------- configuration

    def set_max_rate(self, max_rate_hz: float) -> None:
        """Per-camera submission rate limit; 0 = as fast as the encoder allows. Bad values raise ConfigError (a
        ValueError), the same check as at node start."""
        max_rate_hz = check_max_rate(max_rate_hz)
        with self._lock:  # may change at run time (a ROS parameter): wake the thread to re-plan its wait
            self._max_period = 1.0 / max_rate_hz if max_rate_hz > 0 else 0.0
            self._lock.notify_all()

    @property
    def cameras(self) -> list[str]:
        with self._lock:
            return list(self._order)

    @property
    def in_flight(self) -> int:
        """Frames submitted by this dispatcher and not yet finished."""
        with self._lock:
            return len(self._in_flight) + self._converting

    def pending(self) -> dict[str, bool]:
        """Whether each camera has a frame waiting in its mailbox."""
        with self._lock:
            return {camera: self._slots[camera] is not None for camera in self._order}

    # ---------------------------------------------------------------------------------------------- input

    def offer(self, camera: str, message: Any) -> None:
        """Store the newest frame of ``camera`` (the subscription callback; never blocks on the encoder)."""
        self.stats.received(camera)
        with self._lock:
            now = self._clock()
            self._add_camera(camera)
            if self._stopping:
                drop_reason: str | None = "shutdown"
            else:
                replaced = self._slots[camera]
                self._slots[camera] = PendingFrame(camera, message, now)
                # Replaced while the encoder was full: "busy"; with room to spare only the rate limit held it back
                # (or, without a limit, the dispatcher had not reached it yet: still "busy").
                full = self._full()
                held_by_limit = self._max_period > 0 and not full
                drop_reason = None if replaced is None else ("rate_limit" if held_by_limit else "busy")
                if not full:
                    # With the encoder full the dispatcher can do nothing with this frame until one finishes, and
                    # that wakes it: not waking it here saves a thread switch per dropped frame.
                    self._lock.notify_all()
        if drop_reason is not None:
            self.stats.dropped(camera, drop_reason)

    # --------------------------------------------------------------------------------------------- policy

    def pump(self) -> int:
        """Publish what has finished, then submit while the encoder has room; returns the number submitted."""
        self._publish_completed()
        submitted = 0
        while (frame := self._take_next()) is not None:
            if self._submit(frame):
                submitted += 1
        return submitted

    def next_eligible_time(self) -> float | None:
        """When the earliest rate-limited waiting frame may be submitted (None: nothing is waiting on the rate)."""
        with self._lock:
            times = [self._last_submit[c] + self._max_period for c in self._order
                     if self._slots[c] is not None and c in self._last_submit and self._max_period > 0]
            return min(times) if times else None

    def _eligible(self, camera: str, now: float) -> bool:
        last = self._last_submit.get(camera)
        # The microsecond of slack absorbs float rounding of clock values, far below any camera's frame period.
        return last is None or self._max_period <= 0 or now >= last + self._max_period - CLOCK_SLACK_S

    def _take_next(self) -> PendingFrame | None:
        """The waiting frame of the next eligible camera after the cursor, reserving an encoder slot for it."""
        with self._lock:
            if self._full() or not self._order:
                return None
            now = self._clock()
            for offset in range(len(self._order)):
                index = (self._cursor + offset) % len(self._order)
                camera = self._order[index]
                frame = self._slots[camera]
                if frame is not None and self._eligible(camera, now):
                    self._slots[camera] = None
                    self._cursor = index + 1
                    self._last_submit[camera] = now
                    self._converting += 1
                    return frame
            return None

    def _decode(self, frame: PendingFrame) -> PendingFrame:
        """The frame with its deserialised message (as it is for a camera that offers messages)."""
        deserialize = self._deserialize.get(frame.camera)
        if deserialize is None:
            return frame
        try:
            return replace(frame, message=deserialize(frame.message))
        except Exception as error:  # truncated or foreign bytes: this frame is bad, the camera's next one may not be
            raise BadFrame(f"cannot deserialise the message ({len(frame.message)} bytes): "
                           f"{type(error).__name__}: {error}") from None

    def _submit(self, frame: PendingFrame) -> bool:
        try:
            frame = self._decode(frame)
            image = self._convert(frame.message)
            future = self._encoder.submit(image, tokens=self._tokens)
        except BadFrame as bad:
            self._release()
            self.stats.bad_frame(frame.camera, str(bad))
            self._on_bad_frame(frame, str(bad))
            return False
        except Exception as error:  # the encoder refused the frame: count it, keep serving
            self._release()
            self.stats.error(frame.camera, f"{type(error).__name__}: {error}")
            self._on_error(frame, f"{type(error).__name__}: {error}")
            return False
        with self._lock:
            self._converting -= 1
            self._in_flight[future] = frame
        future.add_done_callback(self._finished)  # after registering: a future that is already done calls back now
        return True

    def _release(self) -> None:
        with self._lock:
            self._converting -= 1
            self._lock.notify_all()

    def _finished(self, future: Future) -> None:
        # Runs on the encoder's thread (or inline if already done): hand over, let the dispatcher thread publish.
        with self._lock:
            frame = self._in_flight.pop(future, None)
            if frame is not None:
                self._completed.append((frame, future))
            self._lock.notify_all()

    def _publish_completed(self) -> None:
        while True:
            with self._lock:
                if not self._completed:
                    return
                frame, future = self._completed.popleft()
            self._deliver(frame, future)

    def _deliver(self, frame: PendingFrame, future: Future) -> None:
        if future.cancelled():
            self.stats.dropped(frame.camera, "shutdown")
            return
        error = future.exception()
        if error is not None:
            self.stats.error(frame.camera, f"{type(error).__name__}: {error}")
            self._on_error(frame, f"encoder failed: {type(error).__name__}: {error}")
            return
        result = future.result()
        try:
            latency = self._publish(frame, result)
        except Exception as publish_error:  # a failing publisher must not stop the dispatcher
            self.stats.error(frame.camera, f"publish failed: {publish_error}")
            self._on_error(frame, f"publish failed: {type(publish_error).__name__}: {publish_error}")
            return
        self.stats.published(frame.camera, latency, getattr(result, "latency_s", None))

    def _add_camera(self, camera: str) -> None:
        if camera not in self._slots:
            self._order.append(camera)
            self._slots[camera] = None

    # --------------------------------------------------------------------------------------------- thread

    def start(self) -> None:
        """Run the dispatcher on its own daemon thread."""
        if self._thread is not None:
            raise RuntimeError("dispatcher already started")
        self._thread = threading.Thread(target=self._run, name="siglip-dispatcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                with self._lock:
                    while not self._stopping and not self._completed and not self._can_submit():
                        # A full encoder wakes this thread when a frame finishes (_finished); only with room to spare
                        # is a rate-limited camera's next turn worth a timed wake-up (else: a 1 kHz spin while full).
                        full = self._full()
                        wake_at = None if full else self.next_eligible_time()
                        self._lock.wait(None if wake_at is None else max(wake_at - self._clock(), 0.001))
                    if self._stopping:
                        return
                self.pump()
            except Exception as error:  # never a dead dispatcher: report it where the node's user sees it, go on
                self._report_failure(error)
                with self._lock:
                    self._lock.wait(RETRY_AFTER_FAILURE_S)

    def _report_failure(self, error: Exception) -> None:
        # The owner's on_failure reports it where the user looks (the node: its log, throttled); the traceback then
        # goes to Python's debug level only (the node does not forward that level), not a second error line.
        LOG.log(logging.DEBUG if self._owner_reports_failures else logging.ERROR, "dispatcher pass failed",
                exc_info=error)
        reason = f"{type(error).__name__}: {error}"
        self.stats.error(DISPATCHER_KEY, f"dispatcher pass failed: {reason}")
        try:
            self._on_failure(reason)
        except Exception:  # noqa: BLE001 - a failing log sink must not stop the dispatcher either
            LOG.exception("on_failure callback failed")

    def _full(self) -> bool:
        """Every encoder slot taken, by frames in flight or being converted (call with the lock held)."""
        return len(self._in_flight) + self._converting >= self._encoder.capacity

    def _can_submit(self) -> bool:
        if self._full():
            return False
        now = self._clock()
        return any(self._slots[c] is not None and self._eligible(c, now) for c in self._order)

    def stop(self, drain: bool = True, timeout: float = 5.0) -> None:
        """Stop taking frames; publish the frames in flight (``drain``, up to ``timeout`` s) or drop them.

        Waiting frames that never reached the encoder are dropped as ``shutdown``. Call before closing the encoder.
        Bounded by ``timeout`` as a whole, even if the dispatcher thread is stuck in a conversion or a publish.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping = True
            for camera in self._order:
                if self._slots[camera] is not None:
                    self._slots[camera] = None
                    self.stats.dropped(camera, "shutdown")
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                LOG.error("the dispatcher thread did not stop within %.1f s; leaving it behind", timeout)
            self._thread = None
        with self._lock:
            outstanding = list(self._in_flight)
        if drain and outstanding:
            wait_futures(outstanding, timeout=max(0.0, deadline - time.monotonic()))
        else:
            for future in outstanding:
                future.cancel()
        if drain:
            # A future's done-callbacks run just after wait() returns: collect finished ones here, not through them.
            with self._lock:
                for future in [f for f in self._in_flight if f.done()]:
                    self._completed.append((self._in_flight.pop(future), future))
            self._publish_completed()
        with self._lock:
            leftovers = list(self._completed) + [(frame, None) for frame in self._in_flight.values()]
            self._completed.clear()
            self._in_flight.clear()
        for frame, _ in leftovers:
            self.stats.dropped(frame.camera, "shutdown")

