"""Fault report (issue 10): what a failing NPU call, a hung one and hostile camera frames cost. Prints, never asserts.

1. Frames lost per fault kind (raise, NaN, wrong shape, stuck call) and scheduler mode, with one core broken (every
   call on core 1 fails) and with 5 % of all calls failing, on real ONNX Runtime runners (random:tiny, pipeline3)
   wrapped by backends.faults. "stuck": calls on core 1 never return; the encoder's call watchdog (call timeout
   1 s here, 60 s by default) fails the hung frame and, in replicas mode, retires the core; frames counted within a
   window.
2. Node shutdown time (EncoderService.close) with a stuck call in flight, against the drain timeout (goal: drain
   timeout + <= 1 s).
3. RSS before/after a soak of 3 cameras x 30 Hz, 640x480, 1 % hostile frames (PNG bombs, forged headers, corrupt
   JPEGs, broken raw geometry) through the ROS-free node core (goal: flat within 5 MB).

    python benchmarks/fault_bench.py [--soak-s 60] [--frames 100]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
from rosbags.typesys import Stores, get_typestore

from rk_siglip_ros.manifest import load_manifest
from rk_siglip_ros.node.config import validate
from rk_siglip_ros.node.log_bridge import forward_library_logs
from rk_siglip_ros.node.service import EncoderService
from rk_siglip_ros.runtime.backends import create_backend
from rk_siglip_ros.runtime.encoder import SiglipEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))  # developer-only modules, not installed
from fault_backends import FAULT_KINDS, FaultInjectingBackend  # noqa: E402

MODES = ("sequential", "pipeline", "replicas")
TOPICS = ("/cam0/image_raw", "/cam1/image_raw", "/cam2/image_raw/compressed")
STUCK_WINDOW_S = 3.0
CALL_TIMEOUT_S = 1.0
MB = 1024 * 1024


def build_tiny(folder: Path) -> Path:
    from rk_siglip_ros.builder.build import build_shards

    build_shards("random:tiny", folder, profile="pipeline3", formats=("onnx",), progress=False)
    return folder


def frame(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ frames lost


def frames_lost(manifest: Any, kind: str, mode: str, frames: int, cores: set[int] | None, rate: float) -> str:
    backend = FaultInjectingBackend(create_backend("onnxruntime", threads=1), kind, cores=cores, rate=rate, seed=1)
    encoder = SiglipEncoder(manifest, backend, mode=mode, call_timeout_s=CALL_TIMEOUT_S)
    try:
        if kind == "stuck":
            return _lost_with_stuck_call(encoder, frames)
        futures = [encoder.submit(frame(index)) for index in range(frames)]
        wait(futures)
        lost = sum(future.exception() is not None for future in futures)
        retired = f", core {','.join(map(str, encoder.retired_cores()))} retired" if encoder.retired_cores() else ""
        return f"{lost}/{frames} ({backend.injected} faults){retired}"
    finally:
        backend.release()
        encoder.close(cancel=True, timeout=2.0)


def _lost_with_stuck_call(encoder: SiglipEncoder, frames: int) -> str:
    """Submit without blocking for STUCK_WINDOW_S; frames not resolved by then are lost to the hung call."""
    futures = []
    end = time.monotonic() + STUCK_WINDOW_S

    def feed() -> None:
        for index in range(frames):
            try:
                futures.append(encoder.submit(frame(index)))
            except Exception:  # noqa: BLE001 - closed at the end of the window while blocked: stop feeding
                return

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    feeder.join(max(0.0, end - time.monotonic()))
    time.sleep(max(0.0, end - time.monotonic()))  # frames admitted early still have the whole window to resolve
    done = sum(f.done() and not f.cancelled() and f.exception() is None for f in list(futures))
    retired = f", core {','.join(map(str, encoder.retired_cores()))} retired" if encoder.retired_cores() else ""
    return f"{frames - done}/{frames} in {STUCK_WINDOW_S:.0f} s{retired}"


def report_frames_lost(manifest: Any, frames: int) -> None:
    print(f"\n1. Frames lost out of {frames} (random:tiny pipeline3 on ONNX Runtime, fault on the last shard)")
    scenarios = (("core 1 broken", {1}, 1.0), ("5 % of calls", None, 0.05))
    print(f"{'fault':<8} {'scenario':<14} " + " ".join(f"{mode:<32}" for mode in MODES))
    for kind in FAULT_KINDS:
        for label, cores, rate in scenarios:
            if kind == "stuck" and rate < 1.0:
                continue
            # In sequential and pipeline mode the last shard runs on one core only: "core 1 broken" is that core.
            cells = [frames_lost(manifest, kind, mode, frames, cores if mode == "replicas" else None, rate)
                     for mode in MODES]
            print(f"{kind:<8} {label:<14} " + " ".join(f"{cell:<32}" for cell in cells), flush=True)


# ----------------------------------------------------------------------------------------------------- shutdown


def report_shutdown(shards: Path, types: Any, drain_s: float) -> None:
    print(f"\n2. Node shutdown with a stuck NPU call (drain timeout {drain_s:.1f} s; goal <= {drain_s + 1:.1f} s)")
    for mode in MODES:
        holder: dict[str, FaultInjectingBackend] = {}

        def factory(config: Any, mode: str = mode, holder: dict = holder) -> SiglipEncoder:
            backend = FaultInjectingBackend(create_backend("onnxruntime", threads=1), "stuck", shard=1)
            holder["backend"] = backend
            return SiglipEncoder(load_manifest(config.shards, verify=()), backend, mode=mode)

        errors: list[str] = []
        # The node's log as the node has it: its own lines, and the library's forwarded (the scheduler names the
        # stuck core).
        stop_forwarding = forward_library_logs(errors.append, errors.append, errors.append)
        core = EncoderService(validate({"shards": str(shards), "image_topics": list(TOPICS), "mode": mode}),
                               open_publisher=lambda topic: lambda header, fields: None, now_s=time.time,
                               warn=errors.append, error=errors.append, encoder_factory=factory)
        for index, topic in enumerate(TOPICS):
            core.offer(topic, raw_message(types, frame(index, 480, 640), index))
        deadline = time.monotonic() + 10
        while holder["backend"].injected == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        core.close(timeout_s=drain_s)
        took = time.monotonic() - started
        stop_forwarding()
        holder["backend"].release()
        verdict = "met" if took <= drain_s + 1.0 else "MISSED"
        named = next((line for line in errors if "stuck" in line), "no log line naming the stuck core")
        print(f"  {mode:<11} close() took {took:5.2f} s ({verdict}); log: {named}", flush=True)


# --------------------------------------------------------------------------------------------------------- soak


def raw_message(types: Any, rgb: np.ndarray, sec: int, topic_frame: str = "cam") -> Any:
    height, width, _ = rgb.shape
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=0),
                                          frame_id=topic_frame)
    return types["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding="rgb8",
                                          is_bigendian=0, step=width * 3, data=rgb.reshape(-1).copy())


def compressed_message(types: Any, data: bytes, sec: int) -> Any:
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=0),
                                          frame_id="cam2")
    return types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg",
                                                    data=np.frombuffer(data, np.uint8).copy())


def png_bomb(side: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)
    body = b"".join([compressor.compress(row) for _ in range(side)] + [compressor.flush()])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def hostile_messages(types: Any) -> list[tuple[str, Any]]:
    """(topic, message) pairs a broken or malicious camera could send."""
    ok, jpeg = cv2.imencode(".jpg", frame(7, 480, 640))
    assert ok
    bad_geometry = raw_message(types, frame(8, 48, 64), 0)
    bad_geometry.step = 10
    return [
        (TOPICS[2], compressed_message(types, png_bomb(16000), 0)),  # 768 MB decoded
        (TOPICS[2], compressed_message(types, jpeg.tobytes()[: len(jpeg) // 3], 0)),  # truncated JPEG
        (TOPICS[2], compressed_message(types, os.urandom(4096), 0)),
        (TOPICS[0], bad_geometry),
    ]


def report_soak(shards: Path, types: Any, seconds: float) -> None:
    rate_hz, hostile_share = 30.0, 0.01
    print(f"\n3. Soak: 3 cameras x {rate_hz:.0f} Hz, 640x480, {hostile_share:.0%} hostile frames, {seconds:.0f} s "
          "(random:tiny, onnxruntime, replicas; goal: RSS flat within 5 MB)")
    published = [0]
    hostile = hostile_messages(types)
    ok, jpeg = cv2.imencode(".jpg", frame(3, 480, 640))
    good = {TOPICS[0]: raw_message(types, frame(1, 480, 640), 1), TOPICS[1]: raw_message(types, frame(2, 480, 640), 1),
            TOPICS[2]: compressed_message(types, jpeg.tobytes(), 1)}

    def publish(header: Any, fields: dict[str, Any]) -> None:
        published[0] += 1

    core = EncoderService(validate({"shards": str(shards), "backend": "onnxruntime", "mode": "replicas",
                                     "image_topics": list(TOPICS)}),
                           open_publisher=lambda topic: publish, now_s=time.time, warn=lambda line: None,
                           error=lambda line: None)
    rng = np.random.default_rng(0)
    process = psutil.Process()

    def run(duration: float) -> int:
        sent, start = 0, time.monotonic()
        while time.monotonic() - start < duration:
            for topic in TOPICS:
                if rng.random() < hostile_share:
                    hostile_topic, message = hostile[int(rng.integers(len(hostile)))]
                    core.offer(hostile_topic, message)
                else:
                    core.offer(topic, good[topic])
                sent += 1
            time.sleep(max(0.0, start + sent / (rate_hz * len(TOPICS)) - time.monotonic()))
        return sent

    try:
        run(min(10.0, seconds / 4))  # warm-up: allocator pools, ORT arenas, first bombs
        gc.collect()
        before, at_start = process.memory_info().rss, core.stats.totals()
        sent = run(seconds)
        gc.collect()
        after = process.memory_info().rss
    finally:
        core.close()
    totals = {key: value - at_start.get(key, 0) for key, value in core.stats.totals().items()}
    delta = (after - before) / MB
    verdict = "met" if abs(delta) <= 5.0 else "MISSED"
    print(f"  RSS before {before / MB:.1f} MB, after {after / MB:.1f} MB: {delta:+.1f} MB ({verdict}); "
          f"{sent} frames offered, {totals.get('published', 0)} published, {totals.get('bad_frames', 0)} bad frames "
          f"refused, {totals.get('errors', 0)} encoder errors", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100, help="frames per fault/mode cell (default: 100)")
    parser.add_argument("--soak-s", type=float, default=60.0, help="soak duration in seconds (default: 60)")
    parser.add_argument("--drain-s", type=float, default=5.0, help="node drain timeout (default: 5, the node's)")
    args, _ = parser.parse_known_args(argv)  # run_all.py passes its own arguments through
    logging.getLogger("rk_siglip_ros").setLevel(logging.CRITICAL)  # the injected faults are logged by design
    types = get_typestore(Stores.ROS2_HUMBLE).types
    with tempfile.TemporaryDirectory(prefix="fault_bench-") as tmp:
        shards = build_tiny(Path(tmp) / "tiny")
        manifest = load_manifest(shards)
        report_frames_lost(manifest, args.frames)
        report_shutdown(shards, types, args.drain_s)
        report_soak(shards, types, args.soak_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
