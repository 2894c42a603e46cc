"""The node core (ROS-free) under faults: image bombs and undecodable frames are bad frames, NaN never
published, a failing core reported in diagnostics, shutdown bounded with a hung NPU call, a failed dispatch pass
reported to the node's log and diagnostics. Real encoder on the toy ONNX chain; faults by wrapping its runners."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from fault_backends import FaultInjectingBackend
from test_image_header import png, png_bomb, with_png_size
from test_mailbox import CAMERAS, Published, ThreadedEncoder, frame_message, identity, wait_until

from rk_siglip_ros.manifest import load_manifest
from rk_siglip_ros.messages.camera_frames import BadFrame, image_from_message
from rk_siglip_ros.messages.embedding_msg import embedding_from_message
from rk_siglip_ros.node.config import validate
from rk_siglip_ros.node.mailbox import Dispatcher
from rk_siglip_ros.node.service import EncoderService
from rk_siglip_ros.node.stats import ERROR, OK, WARN
from rk_siglip_ros.runtime.backends import create_backend
from rk_siglip_ros.runtime.encoder import SiglipEncoder

RAW, COMPRESSED = "/cam0/image_raw", "/cam1/image_raw/compressed"


def header(types, sec: int):
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=0), frame_id="c")


def raw(types, sec: int, height: int = 24, width: int = 32):
    rgb = np.random.default_rng(sec).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return types["sensor_msgs/msg/Image"](header=header(types, sec), height=height, width=width, encoding="rgb8",
                                          is_bigendian=0, step=width * 3, data=rgb.reshape(-1))


def compressed(types, data: bytes, sec: int = 0):
    return types["sensor_msgs/msg/CompressedImage"](header=header(types, sec), format="png",
                                                    data=np.frombuffer(data, np.uint8).copy())


class Outbox:
    def __init__(self, types) -> None:
        self.image = types["sensor_msgs/msg/Image"]
        self.vectors: list[np.ndarray] = []

    def __call__(self, source_header, fields) -> None:
        self.vectors.append(embedding_from_message(self.image(header=source_header, **fields)))


def node(shards, types, fault: dict | None = None, mode: str = "pipeline", call_timeout_s: float = 60.0, **parameters):
    """An EncoderService on the toy shards; ``fault``: FaultInjectingBackend arguments wrapping ONNX Runtime."""
    outbox, warnings, errors, backends = Outbox(types), [], [], []

    def factory(config):
        backend = create_backend("onnxruntime", threads=1)
        if fault is not None:
            backend = FaultInjectingBackend(backend, **fault)
            backends.append(backend)
        return SiglipEncoder(load_manifest(config.shards), backend, mode=config.mode, call_timeout_s=call_timeout_s)

    config = validate({"shards": str(shards), "image_topics": [RAW, COMPRESSED], "mode": mode, **parameters})
    core = EncoderService(config, open_publisher=lambda topic: outbox, now_s=time.time, warn=warnings.append,
                           error=errors.append, encoder_factory=factory)
    return core, outbox, warnings, errors, backends


# ------------------------------------------------------------------------------------------- bombs


def test_a_png_bomb_is_refused_from_its_header_as_a_bad_frame(types):
    with pytest.raises(BadFrame, match=r"too large: the header declares 8000x8000 = 64.0 MP, above the limit of 50 MP"):
        image_from_message(compressed(types, png_bomb(8000, 8000)))


def test_a_header_opencv_cannot_decode_is_a_bad_frame_not_a_cv2_error(types):
    """100000 x 100000 made cv2.imdecode raise cv2.error; with no limit it must still be a bad frame."""
    forged = compressed(types, with_png_size(png(8, 8), 100_000, 100_000))
    with pytest.raises(BadFrame, match="too large"):
        image_from_message(forged)
    with pytest.raises(BadFrame, match="corrupt compressed image"):
        image_from_message(forged, max_pixels=0)


def test_raw_frames_above_the_limit_are_bad_frames(types):
    with pytest.raises(BadFrame, match=r"32x24 = 0.0 MP, above the limit of 0.0005 MP"):
        image_from_message(raw(types, 1), max_pixels=500)
    assert image_from_message(raw(types, 1), max_pixels=768).shape == (24, 32, 3)


def test_node_counts_bombs_as_bad_frames_and_serves_the_next_frame(toy_shards, types):
    core, outbox, warnings, errors, _ = node(toy_shards, types, max_image_pixels=1000)
    try:
        core.offer(COMPRESSED, compressed(types, png_bomb(2000, 2000)))
        core.offer(RAW, raw(types, 1, 48, 64))  # 3072 px > 1000: refused by the parameter
        assert wait_until(lambda: core.stats.totals().get("bad_frames", 0) == 2)
        ok, small = cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))
        core.offer(COMPRESSED, compressed(types, small.tobytes(), 2))
        assert wait_until(lambda: len(outbox.vectors) == 1), "the good frame after the bombs was not served"
    finally:
        core.close()
    assert core.stats.totals().get("errors", 0) == 0 and errors == []
    assert any("too large" in line for line in warnings) and any("above the limit" in line for line in warnings)


# ------------------------------------------------------------------------------------------- NaN


@pytest.mark.parametrize("kind", ["nan", "shape"])
def test_nan_or_wrong_width_is_never_published_and_diagnostics_say_so(toy_shards, types, kind):
    core, outbox, _, errors, _ = node(toy_shards, types, {"kind": kind})
    try:
        for sec in range(1, 4):
            core.offer(RAW, raw(types, sec))
            assert wait_until(lambda sec=sec: core.stats.totals().get("errors", 0) == sec)
        report = core.diagnostics()
    finally:
        core.close()
    assert outbox.vectors == []
    assert report.level > OK and "EncoderOutputError" in report.message
    assert any("EncoderOutputError" in line for line in errors)


# ------------------------------------------------------------------------------------------- failing core


def test_a_retired_core_is_in_diagnostics_as_warn_and_logged_once(toy_shards, types, node_log):
    core, outbox, _, errors, _ = node(toy_shards, types, {"kind": "raise", "cores": {2}}, mode="replicas")
    try:
        sec = 0
        while not core.encoder.retired_cores():
            sec += 1
            assert sec < 300, "core 2 was never retired"
            core.offer(RAW, raw(types, sec))
            assert wait_until(lambda: core.dispatcher.in_flight == 0 and not any(core.dispatcher.pending().values()))
        first, second = core.diagnostics(), core.diagnostics()
        published = len(outbox.vectors)
        core.offer(RAW, raw(types, 1000))
        assert wait_until(lambda: len(outbox.vectors) == published + 1), "no frame served after the retirement"
    finally:
        core.close()
    for report in (first, second):
        assert report.level >= WARN and "NPU core 2 out of rotation" in report.message
        assert any(key == "core 2 status" and "out of rotation" in value for key, value in report.values)
    assert any(key == "core 2 status" and "restart the node" in value for key, value in first.values)
    assert sum("core 2 out of rotation" in line for line in node_log["error"] + errors) == 1


# ------------------------------------------------------------------------------------------- stuck call


@pytest.mark.parametrize("mode", ["pipeline", "replicas"])
def test_node_shutdown_is_bounded_with_a_stuck_npu_call(toy_shards, types, mode, node_log):
    core, _, _, errors, backends = node(toy_shards, types, {"kind": "stuck", "shard": 1}, mode=mode)
    try:
        core.offer(RAW, raw(types, 1))
        assert wait_until(lambda: backends[0].injected == 1), "the stuck call never started"
        started = time.monotonic()
        core.close(timeout_s=0.3)
        took = time.monotonic() - started
    finally:
        backends[0].release()
    assert took < 0.3 + 1.0, f"shutdown took {took:.2f} s with a 0.3 s drain timeout"
    stuck = [line for line in node_log["error"] + errors if "stuck in shard 1" in line]
    assert len(stuck) == 1 and "core" in stuck[0] and "left behind" in stuck[0], (node_log, errors)


# ------------------------------------------------------------------------------------------- dispatcher


class FlakyCapacity(ThreadedEncoder):
    """An encoder whose ``capacity`` raises a few times (a bug in a dependency), then works."""

    def __init__(self, failures: int) -> None:
        super().__init__(capacity=2)
        self.release.set()
        self._failures = failures
        self._guard = threading.Lock()

    @property
    def capacity(self) -> int:
        with self._guard:
            if self._failures > 0 and threading.current_thread().name == "siglip-dispatcher":
                self._failures -= 1
                raise RuntimeError("capacity unavailable")
        return 2

    @capacity.setter
    def capacity(self, value: int) -> None:
        pass


def test_a_failed_dispatch_pass_reaches_the_nodes_log_and_diagnostics():
    encoder, published, failures = FlakyCapacity(failures=3), Published(), []
    dispatcher = Dispatcher(encoder, published, cameras=CAMERAS, convert=identity, on_failure=failures.append)
    dispatcher.start()
    try:
        dispatcher.offer(CAMERAS[0], frame_message(0, 0))
        assert wait_until(lambda: len(published.frames) == 1), "the dispatcher stopped serving after a failed pass"
    finally:
        dispatcher.stop()
        encoder.close()
    assert failures and all("RuntimeError: capacity unavailable" in line for line in failures)
    report = dispatcher.stats.report()
    assert dispatcher.stats.totals()["errors"] == len(failures)
    assert "dispatcher pass failed" in report.message


def test_a_hung_call_is_an_error_in_diagnostics_and_logged_once(toy_shards, types, node_log):
    core, outbox, _, errors, backends = node(toy_shards, types, {"kind": "stuck", "shard": 1}, call_timeout_s=0.3)
    try:
        core.offer(RAW, raw(types, 1))
        assert wait_until(lambda: core.stats.totals().get("errors", 0) == 1), "the hung frame was never failed"
        first, second = core.diagnostics(), core.diagnostics()
    finally:
        backends[0].release()
        core.close()
    for report in (first, second):
        assert report.level == ERROR and "stuck in shard 1" in report.message
        assert any(key.endswith(" stuck") and value.startswith("shard 1 for") for key, value in report.values)
    assert sum("stuck in shard 1" in line and "frame dropped" in line for line in node_log["error"]) == 1
    assert outbox.vectors == []
