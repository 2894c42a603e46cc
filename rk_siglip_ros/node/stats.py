"""Counters and latencies for the encoder node's diagnostics, ROS-free.

The dispatcher and the node record events here from several threads; :meth:`NodeStats.report` turns what happened
since the previous report into a level, a one-line summary and plain key/value pairs, which
``encoder_node.py`` copies into a ``diagnostic_msgs/DiagnosticStatus`` (this module never imports ROS).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

OK, WARN, ERROR = 0, 1, 2  # the DiagnosticStatus levels, as plain ints
DROP_REASONS = ("busy", "rate_limit", "shutdown")
# A camera with publishers is reported as "publishers but no frames" (with a cause, and logged) only after this long
# without a frame: a driver that has just started, or a slow camera, is not a problem.
SILENT_WITH_PUBLISHERS_S = 3.0
LATENCY_SAMPLES = 2048  # per report period; enough for p95 at 3 cameras x 30 Hz over 10 s


@dataclass
class DiagnosticReport:
    level: int
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)
    # topic -> why it sent no frames this period, for cameras that have publishers (worth a log line, not only a
    # diagnostics entry: on a robot this is the "no embeddings and no idea why" case).
    silent_with_publishers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicPublishers:
    """Who publishes on a camera topic, as the ROS graph says (the node's adapter asks it at every report)."""

    count: int
    # Types those publishers use other than the one the node subscribes with (DDS never matches them).
    other_types: tuple[str, ...] = ()


@dataclass
class _Period:
    """What happened since the previous report."""

    received: Counter = field(default_factory=Counter)
    published: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)  # key: (camera, reason)
    bad_frames: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    latency_s: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    encode_latency_s: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


def stamp_to_seconds(stamp: object) -> float:
    """A builtin_interfaces/Time (rclpy or rosbags) as float seconds."""
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


class NodeStats:
    """Thread-safe event counters; ``report()`` summarises and resets the period."""

    def __init__(self, cameras: Iterable[str] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._cameras: list[str] = list(dict.fromkeys(cameras))
        self._period = _Period()
        self._period_start = clock()
        self._started = self._period_start
        self._last_frame: dict[str, float] = {}  # camera -> clock time of its latest frame
        self._totals: Counter = Counter()
        self._incompatible_qos: dict[str, str] = {}  # camera -> last incompatible QoS policy a publisher offered
        self.last_error: str = ""
        self.last_bad_frame: str = ""

    # ----------------------------------------------------------------------------------------------- events

    def received(self, camera: str) -> None:
        with self._lock:
            self._camera(camera)
            self._last_frame[camera] = self._clock()
            self._incompatible_qos.pop(camera, None)  # frames arrive now: a later silence has another cause
            self._period.received[camera] += 1
            self._totals["received"] += 1

    def dropped(self, camera: str, reason: str) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}; expected one of {DROP_REASONS}")
        with self._lock:
            self._period.dropped[(camera, reason)] += 1
            self._totals[f"dropped_{reason}"] += 1

    def bad_frame(self, camera: str, reason: str) -> None:
        with self._lock:
            self._period.bad_frames[camera] += 1
            self._totals["bad_frames"] += 1
            self.last_bad_frame = f"{camera}: {reason}"

    def error(self, camera: str, message: str) -> None:
        with self._lock:
            self._period.errors[camera] += 1
            self._totals["errors"] += 1
            self.last_error = f"{camera}: {message}"

    def incompatible_qos(self, camera: str, policy: str) -> None:
        """A publisher on ``camera`` offers QoS the subscription cannot match (rclpy's incompatible-QoS event):
        DDS will deliver nothing from it. Remembered until the camera's frames arrive from someone else."""
        with self._lock:
            self._camera(camera)
            self._incompatible_qos[camera] = policy
            self._totals["incompatible_qos"] += 1

    def published(self, camera: str, latency_s: float | None, encode_latency_s: float | None = None) -> None:
        """One embedding out; latency_s is source stamp -> publish (None when the stamp is unusable)."""
        with self._lock:
            self._period.published[camera] += 1
            self._totals["published"] += 1
            if latency_s is not None:
                self._period.latency_s.append(latency_s)
            if encode_latency_s is not None:
                self._period.encode_latency_s.append(encode_latency_s)

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    # ----------------------------------------------------------------------------------------------- report

    def report(self, core_busy: Mapping[int, float] | None = None, in_flight: int | None = None,
               capacity: int | None = None, publishers: Mapping[str, TopicPublishers] | None = None,
               lost_frames_hint: str = "", udp_drops: int | None = None) -> DiagnosticReport:
        """Summarise the period since the previous call and start a new one.

        ``publishers`` (per camera topic, where known) lets a silent camera be explained: no publisher, a publisher
        of another type, incompatible QoS, or, with none of those, frames lost on the way (``lost_frames_hint``
        says what to do about that, e.g. the DDS config for large images). ``udp_drops``: UDP datagrams the kernel
        dropped for full receive buffers in the period (whole host; None where unknown)."""
        with self._lock:
            period, self._period = self._period, _Period()
            now = self._clock()
            elapsed = max(now - self._period_start, 1e-9)
            self._period_start = now
            cameras = list(self._cameras)
            totals = dict(self._totals)
            last_error, last_bad_frame = self.last_error, self.last_bad_frame
            incompatible = dict(self._incompatible_qos)
            silent_s = {camera: now - self._last_frame.get(camera, self._started) for camera in cameras}

        received, published = sum(period.received.values()), sum(period.published.values())
        errors, bad = sum(period.errors.values()), sum(period.bad_frames.values())
        drops = Counter()
        for (_, reason), count in period.dropped.items():
            drops[reason] += count

        values: list[tuple[str, str]] = [
            ("input rate (Hz)", f"{received / elapsed:.2f}"),
            ("output rate (Hz)", f"{published / elapsed:.2f}"),
            *((f"dropped, {reason.replace('_', ' ')} (per s)", f"{drops[reason] / elapsed:.2f}")
              for reason in DROP_REASONS),
            ("bad frames", str(bad)),
            ("encoder errors", str(errors)),
            *_percentiles("latency stamp->publish", period.latency_s),
            *_percentiles("encode latency", period.encode_latency_s),
        ]
        if in_flight is not None:
            values.append(("in flight", str(in_flight)))
        if capacity is not None:
            values.append(("capacity", str(capacity)))
        if udp_drops is not None:
            values.append(("UDP drops, receive buffer full (host, per s)", f"{udp_drops / elapsed:.1f}"))
        for core, busy in sorted((core_busy or {}).items()):
            values.append((f"core {core} busy (%)", f"{100.0 * busy:.1f}"))
        for camera in cameras:
            camera_drops = sum(count for (name, _), count in period.dropped.items() if name == camera)
            values += [
                (f"{camera}: input rate (Hz)", f"{period.received[camera] / elapsed:.2f}"),
                (f"{camera}: output rate (Hz)", f"{period.published[camera] / elapsed:.2f}"),
                (f"{camera}: dropped", str(camera_drops)),
                (f"{camera}: bad frames", str(period.bad_frames[camera])),
            ]
            if publishers is not None and camera in publishers:
                values.append((f"{camera}: publishers", str(publishers[camera].count)))
        values += [(f"total {name}", str(count)) for name, count in sorted(totals.items())]
        values += [("last error", last_error), ("last bad frame", last_bad_frame)]

        known = publishers or {}
        silent = {camera: silent_camera_cause(camera, known.get(camera), incompatible.get(camera), lost_frames_hint,
                                              silent_s[camera], udp_drops)
                  for camera in cameras if not period.received[camera]}
        level, message = _summary(received, published, errors, bad, len(cameras), list(silent.values()),
                                  last_error, last_bad_frame)
        with_publishers = {camera: line for camera, line in silent.items()
                           if camera in known and known[camera].count > 0
                           and silent_s[camera] >= SILENT_WITH_PUBLISHERS_S}
        return DiagnosticReport(level, message, values, with_publishers)

    def _camera(self, camera: str) -> None:
        if camera not in self._cameras:
            self._cameras.append(camera)


def _percentiles(name: str, samples: deque) -> list[tuple[str, str]]:
    if not samples:
        return [(f"{name} p50 (ms)", "n/a"), (f"{name} p95 (ms)", "n/a")]
    p50, p95 = np.percentile(np.fromiter(samples, dtype=np.float64), [50, 95]) * 1000.0
    return [(f"{name} p50 (ms)", f"{p50:.1f}"), (f"{name} p95 (ms)", f"{p95:.1f}")]


def silent_camera_cause(camera: str, publishers: TopicPublishers | None, incompatible_policy: str | None,
                        lost_frames_hint: str, silent_s: float, udp_drops: int | None) -> str:
    """One line: a camera sent no frames in the period, and the likeliest reason, most certain first."""
    if publishers is None:
        return f"no frames on {camera}"
    if publishers.count == 0:
        return f"no frames on {camera}: no publisher"
    who = f"{publishers.count} publisher{'s' if publishers.count != 1 else ''}"
    head = f"no frames on {camera} for {silent_s:.0f} s from {who}"
    if publishers.other_types:
        return (f"{head}: they publish {', '.join(publishers.other_types)}, not the type this node subscribes with "
                f"(topics ending in /compressed are sensor_msgs/CompressedImage)")
    if incompatible_policy:
        return (f"{head}: QoS incompatible with the node's subscription (policy {incompatible_policy}); set the "
                f"node's qos parameter to match the publisher (a best-effort camera needs qos: sensor_data)")
    if silent_s < SILENT_WITH_PUBLISHERS_S:
        return head  # too early to blame anything
    cause = (f"{head}: frames lost in DDS (the kernel dropped {udp_drops} UDP datagrams for full receive buffers "
             f"meanwhile)" if udp_drops else f"{head}: frames likely lost in DDS")
    return f"{cause}; {lost_frames_hint}" if lost_frames_hint else cause


def _summary(received: int, published: int, errors: int, bad: int, cameras: int, silent: list[str],
             last_error: str, last_bad_frame: str) -> tuple[int, str]:
    if errors and not published:
        return ERROR, f"encoder failing ({errors} errors, nothing published): {last_error}"
    problems = list(silent)
    if errors:
        problems.append(f"{errors} encoder errors (last: {last_error})")
    if bad:
        problems.append(f"{bad} bad frames (last: {last_bad_frame})")
    if problems:
        return WARN, "; ".join(problems)
    return OK, f"{published} embeddings from {received} frames on {cameras} cameras"


class LogThrottle:
    """At most one log line per key (e.g. per topic) every ``period_s``; counts what it held back."""

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: Counter = Counter()

    def admit(self, key: str) -> int | None:
        """None: stay quiet. Otherwise log now; the int is how many messages for ``key`` were held back before."""
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self._period_s:
                self._held[key] += 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)
