"""What the encoder node does, minus ROS: encoder + dispatcher + stats + throttled problem logs, ROS-free.

``encoder_node.py`` creates one :class:`EncoderService` from a validated :class:`~rk_siglip_ros.node.config.NodeConfig`
and gives it three things it cannot know without rclpy: how to open a publisher (of message fields with a header)
on a topic, what time it is on the node's clock, and where log lines go. Which topics get a publisher (the patch
tokens only with ``publish_patch_tokens``, the labels once there are labels) is decided here, and so is the label
scoring (:mod:`rk_siglip_ros.node.labels`): the adapter only turns (label, probability) pairs into a message.
Subscription callbacks call
:meth:`EncoderService.offer`; the diagnostics timer calls :meth:`EncoderService.diagnostics`; shutdown calls
:meth:`EncoderService.close`.
Because nothing here imports ROS, the whole path (message in -> fields out) is tested with rosbags messages.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rk_siglip_ros.manifest import ManifestError
from rk_siglip_ros.messages.camera_frames import image_from_message
from rk_siglip_ros.messages.embedding_msg import embedding_fields
from rk_siglip_ros.node.config import ConfigError, NodeConfig, check_labels, check_top_k
from rk_siglip_ros.node.dds import kernel_receive_buffer_limit, lost_frames_hint, udp_receive_buffer_errors
from rk_siglip_ros.node.labels import EmbedLabels, NodeLabels, check_text_tower, text_tower_embedder
from rk_siglip_ros.node.mailbox import Deserialize, Dispatcher, PendingFrame
from rk_siglip_ros.node.stats import (
    ERROR,
    WARN,
    DiagnosticReport,
    LogThrottle,
    NodeStats,
    TopicPublishers,
    stamp_to_seconds,
)

# publish(header, fields): fields as from embedding_msg.embedding_fields; header is the source message's header object.
PublishFields = Callable[[Any, dict[str, Any]], None]
# open_publisher(topic) -> the publish function of a new sensor_msgs/Image publisher on that topic.
OpenPublisher = Callable[[str], PublishFields]
# publish_labels(header, results): results are (label, probability) pairs, most probable first.
PublishLabels = Callable[[Any, list[tuple[str, float]]], None]
OpenLabelsPublisher = Callable[[str], PublishLabels]
LogLine = Callable[[str], None]
LOG_PERIOD_S = 5.0
DRAIN_TIMEOUT_S = 5.0
# After the drain timeout, how long close() still waits for shard calls running now before leaving them behind.
STUCK_GRACE_S = 0.5
# A camera that has publishers but sends nothing stays so for long: say it every half minute, not every report.
SILENT_LOG_PERIOD_S = 30.0
# What each backend runs on, for the diagnostics hardware ID (never "auto": the backend actually opened).
HARDWARE = {"rknnlite": "rk3588-npu", "sim": "rk3588-npu-simulated", "onnxruntime": "cpu"}


@dataclass(frozen=True)
class ShutdownSummary:
    """What :meth:`EncoderService.close` did: embeddings published since start, how many of them were frames
    finished after the stop request (in the encoder when it came), and frames dropped while stopping."""

    published: int
    finished_after_stop: int
    dropped: int

    def line(self) -> str:
        frames = f"{self.dropped} frame{'' if self.dropped == 1 else 's'}"
        return (f"stopped: published {self.published} embeddings, {self.finished_after_stop} of them finished after "
                f"the stop request; dropped {frames} (waiting in a mailbox, or unfinished after "
                f"{DRAIN_TIMEOUT_S:.0f} s)")


def open_encoder(config: NodeConfig) -> Any:
    """The SiglipEncoder the config asks for (imported here so tests can pass their own factory)."""
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    return SiglipEncoder.open(config.shards, backend=config.backend, mode=config.mode, cores=config.cores,
                              timing_profile=config.timing_profile)


class EncoderService:
    """Frames in (any thread), embeddings out (dispatcher thread), diagnostics on demand."""

    def __init__(self, config: NodeConfig, open_publisher: OpenPublisher, now_s: Callable[[], float],
                 warn: LogLine, error: LogLine, encoder_factory: Callable[[NodeConfig], Any] = open_encoder,
                 open_labels_publisher: OpenLabelsPublisher | None = None,
                 embed_labels: EmbedLabels | None = None, info: LogLine | None = None,
                 deserialize: Mapping[str, Deserialize] | None = None,
                 environ: Mapping[str, str] = os.environ) -> None:
        """``deserialize``: per camera topic, how to turn the serialized message its subscription delivers into a
        message (the node subscribes with ``raw=True``; topics without one deliver messages). ``environ``: the
        process environment, to tell which DDS settings apply when frames go missing."""
        self.config = config
        self._publish_embedding = open_publisher(config.output_topic)
        self._publish_tokens = open_publisher(config.patch_tokens_topic) if config.publish_patch_tokens else None
        self._open_labels_publisher = open_labels_publisher
        self._publish_labels: PublishLabels | None = None
        self._now_s = now_s
        self._warn, self._error, self._info = warn, error, info or (lambda line: None)
        self.labels = NodeLabels(embed_labels or text_tower_embedder(config.shards), config.labels_top_k)
        self.set_labels(config.labels)  # a shard set without a text tower fails here, before the NPU is opened
        self._throttle = LogThrottle(LOG_PERIOD_S)
        self._silent_throttle = LogThrottle(SILENT_LOG_PERIOD_S)
        self._lost_frames_hint = lost_frames_hint(environ, kernel_receive_buffer_limit())
        self._udp_errors = udp_receive_buffer_errors()  # the kernel's count at the previous report
        self._closed = False
        self.stats = NodeStats(config.image_topics)
        self.encoder = encoder_factory(config)
        try:
            self._busy = self.encoder.busy_window()  # our own window: a benchmark reading the encoder cannot reset it
            convert = functools.partial(image_from_message, max_pixels=config.max_image_pixels)
            self.dispatcher = Dispatcher(self.encoder, self._publish, cameras=config.image_topics, convert=convert,
                                         deserialize=deserialize,
                                         max_rate_hz=config.max_rate_hz, tokens=self._publish_tokens is not None,
                                         stats=self.stats, on_bad_frame=self._on_bad_frame, on_error=self._on_error,
                                         on_failure=self._on_dispatcher_failure)
            self.dispatcher.start()
        except BaseException:
            self.encoder.close()  # never leave NPU contexts behind a failed start
            raise

    @property
    def embedding_dim(self) -> int:
        return int(self.encoder.embedding_dim)

    @property
    def backend_name(self) -> str:
        """The backend the encoder opened (``auto`` resolved: rknnlite, onnxruntime or sim)."""
        return str(self.encoder.backend.name)

    @property
    def hardware_id(self) -> str:
        """The diagnostics hardware ID: what runs the encoder and with which backend, e.g. ``rk3588-npu/rknnlite``."""
        return f"{HARDWARE.get(self.backend_name, 'unknown')}/{self.backend_name}"

    def offer(self, topic: str, message: Any) -> None:
        """The subscription callback: store the frame (serialized bytes or a message), return at once."""
        self.dispatcher.offer(topic, message)

    def incompatible_qos(self, topic: str, policy: str) -> None:
        """The subscription's incompatible-QoS event: a publisher on ``topic`` offers QoS this subscription cannot
        match (e.g. best effort while the node asks for reliable), so DDS delivers nothing from it."""
        self.stats.incompatible_qos(topic, policy)
        self._log(self._warn, f"qos {topic}",
                  f"{topic}: a publisher offers QoS incompatible with this node's subscription (qos: "
                  f"{self.config.qos}; policy {policy}): no frames from it. Set the qos parameter to match the "
                  f"publisher (a best-effort camera needs qos: sensor_data)")

    def set_max_rate(self, max_rate_hz: float) -> None:
        """A run-time change of ``max_rate_hz``; raises ConfigError (a ValueError) for a value start would refuse."""
        self.dispatcher.set_max_rate(max_rate_hz)

    def set_labels(self, labels: Any, background: bool = False) -> None:
        """Start, change or (empty) stop label scoring; the text tower runs once per change.

        ``background=False`` (start): embed here. ``background=True`` (a run-time change): check here, embed in a
        background thread, switch when done (and log it); the labels in use stay until then. Raises ConfigError
        (the labels in use stay) for labels start would refuse or a shard set without a text tower.
        """
        checked = check_labels(labels)
        if checked and self._open_labels_publisher is None:
            raise ConfigError("labels: this node cannot publish vision_msgs/Classification")
        try:
            if background and checked:
                check_text_tower(self.config.shards)
                self._open_labels_topic()
                self.labels.change_labels(checked, self._labels_changed)
                return
            label_set = self.labels.set_labels(checked)
        except (ValueError, ManifestError) as error:  # TextError: no text tower, a text without words
            raise ConfigError(f"labels: {error}") from None
        self._labels_changed(label_set, None, 0.0)
        if checked:
            self._open_labels_topic()

    def _open_labels_topic(self) -> None:
        if self._publish_labels is None:
            assert self._open_labels_publisher is not None
            self._publish_labels = self._open_labels_publisher(self.config.labels_topic)

    def _labels_changed(self, label_set: Any, error: BaseException | None, seconds: float) -> None:
        if error is not None:
            self._error(f"labels: {error}; still scoring the previous {self.labels.count} label(s)")
            return
        note = label_set.truncation_note() if label_set is not None else None
        if note:
            self._warn(f"labels: {note}")
        if seconds:
            self._info(f"labels: {self.labels.count} label(s) in use (text tower {seconds:.1f} s)")

    def set_labels_top_k(self, top_k: Any) -> None:
        self.labels.set_top_k(check_top_k(top_k))

    def diagnostics(self, publishers: Mapping[str, TopicPublishers] | None = None) -> DiagnosticReport:
        """The report for /diagnostics. ``publishers``: who publishes on each camera topic (from the ROS graph), so
        a camera with publishers but no frames is explained, in the report and in a (throttled) log line."""
        report = self.stats.report(core_busy=self._busy.read(), in_flight=self.dispatcher.in_flight,
                                   capacity=self.encoder.capacity, publishers=publishers,
                                   lost_frames_hint=self._lost_frames_hint, udp_drops=self._udp_drops())
        for topic, line in report.silent_with_publishers.items():
            if self._silent_throttle.admit(topic) is not None:
                self._warn(line)
        retired = self.encoder.retired_cores()
        # Retired cores and stuck calls are logged once, by the scheduler (log_bridge forwards it to the node's
        # log); diagnostics repeat them every period.
        for core, why in sorted(retired.items()):
            report.values.append((f"core {core} status", f"out of rotation: {why} (restart the node to use it again)"))
        if retired:
            report.level = max(report.level, WARN)
            cores = ", ".join(str(core) for core in sorted(retired))
            report.message = f"NPU core {cores} out of rotation after repeated failures; {report.message}"
        stuck = self.encoder.stuck_calls()
        for call in stuck:
            report.values.append((f"core {call.core} stuck", f"shard {call.shard} for {call.seconds:.1f} s; the call "
                                  "cannot be interrupted (restart the node if it never returns)"))
        if stuck:
            report.level = ERROR
            report.message = f"{'; '.join(str(call) for call in stuck)}; {report.message}"
        report.values += [("labels", str(self.labels.count)), ("labels top k", str(self.labels.top_k))]
        return report

    def _udp_drops(self) -> int | None:
        """UDP datagrams the kernel dropped for full receive buffers since the previous report (whole host)."""
        now, before = udp_receive_buffer_errors(), self._udp_errors
        self._udp_errors = now
        return None if now is None or before is None else max(now - before, 0)

    def close(self, drain: bool = True, timeout_s: float = DRAIN_TIMEOUT_S) -> ShutdownSummary | None:
        """Finish (drain, up to ``timeout_s``) or drop the frames in flight, then release the encoder (every NPU
        context). Bounded: returns within ``timeout_s`` + :data:`STUCK_GRACE_S` (plus the release of the contexts)
        even if an NPU call never returns; such a call is logged with its core and left behind. Returns what
        happened, or None when already closed."""
        if self._closed:
            return None
        self._closed = True
        deadline = time.monotonic() + timeout_s
        before = self.stats.totals()
        try:
            self.dispatcher.stop(drain=drain, timeout=timeout_s)
        finally:
            # Whatever the dispatcher did not publish is already counted dropped: cancel it, so shutdown waits for at
            # most the shards running now instead of computing frames nobody will publish.
            # A call still stuck after that is left behind and logged by the scheduler (log_bridge: the node's log).
            remaining = max(0.0, deadline - time.monotonic())
            self.encoder.close(cancel=True, timeout=remaining + STUCK_GRACE_S)
        after = self.stats.totals()
        return ShutdownSummary(published=after.get("published", 0),
                               finished_after_stop=after.get("published", 0) - before.get("published", 0),
                               dropped=after.get("dropped_shutdown", 0) - before.get("dropped_shutdown", 0))

    # ------------------------------------------------------------------------------------------ callbacks

    def _publish(self, frame: PendingFrame, result: Any) -> float | None:
        header = frame.message.header
        self._publish_embedding(header, embedding_fields(result.embedding))
        if self._publish_tokens is not None and getattr(result, "tokens", None) is not None:
            self._publish_tokens(header, embedding_fields(result.tokens))
        results = self.labels.classify(result.embedding)
        if results is not None and self._publish_labels is not None:
            self._publish_labels(header, results)
        stamp = stamp_to_seconds(header.stamp)
        return self._now_s() - stamp if stamp > 0 else None  # an unset stamp says nothing about latency

    def _on_bad_frame(self, frame: PendingFrame, reason: str) -> None:
        self._log(self._warn, f"bad frame {frame.camera}", f"{frame.camera}: skipped a bad frame: {reason}")

    def _on_error(self, frame: PendingFrame, reason: str) -> None:
        self._log(self._error, f"error {frame.camera}", f"{frame.camera}: {reason}")

    def _on_dispatcher_failure(self, reason: str) -> None:
        self._log(self._error, "dispatcher", f"dispatcher pass failed (frames keep flowing): {reason}")

    def _log(self, sink: LogLine, key: str, line: str) -> None:
        held = self._throttle.admit(key)
        if held is None:
            return
        sink(line if not held else f"{line} (+{held} similar in the last {LOG_PERIOD_S:.0f} s)")
