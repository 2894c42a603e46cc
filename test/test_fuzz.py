"""Fuzz: thousands of seeded hostile camera messages at the ROS-free node core, and corrupted manifests at
the loader and the encoder. Properties: no exception escapes (malformed frames are bad frames, never blamed on the
encoder), nothing non-finite is published, and a good frame is served after each hostile one.

Bounded by time: RK_SIGLIP_FUZZ_SECONDS (default 30 per test, about a minute for the file) and RK_SIGLIP_FUZZ_SEED
(default 0). A longer run: ``RK_SIGLIP_FUZZ_SECONDS=600 .venv/bin/python -m pytest test/test_fuzz.py``. A failure
prints the seed and the case index to replay it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time

import numpy as np
from fuzz_cases import corrupt_manifest, hostile_message

from rk_siglip_ros.manifest import ManifestError, load_manifest
from rk_siglip_ros.messages.embedding_msg import embedding_from_message
from rk_siglip_ros.node.config import validate
from rk_siglip_ros.node.service import EncoderService
from rk_siglip_ros.runtime.backends import BackendError
from rk_siglip_ros.runtime.encoder import EncoderOutputError, SiglipEncoder

SECONDS = float(os.environ.get("RK_SIGLIP_FUZZ_SECONDS", "30"))
SEED = int(os.environ.get("RK_SIGLIP_FUZZ_SEED", "0"))
BAD, GOOD = "/fuzz/image_raw", "/good/image_raw"
LIVENESS_S = 30.0  # a deadline for "the good frame came out", not a timing assertion


class Published:
    def __init__(self, types) -> None:
        self.image = types["sensor_msgs/msg/Image"]
        self.stamps: list[int] = []
        self.non_finite = 0
        self.changed = threading.Condition()

    def __call__(self, header, fields) -> None:
        vector = embedding_from_message(self.image(header=header, **fields))
        with self.changed:
            self.non_finite += int(not np.isfinite(vector).all())
            self.stamps.append(int(header.stamp.sec))
            self.changed.notify_all()

    def wait_for_stamp(self, sec: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: sec in self.stamps[-4:], LIVENESS_S)


def header(types, sec: int):
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=0),
                                        frame_id="fuzz")


def good_message(types, sec: int):
    rgb = np.random.default_rng(sec).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    return types["sensor_msgs/msg/Image"](header=header(types, sec), height=12, width=16, encoding="rgb8",
                                          is_bigendian=0, step=48, data=rgb.reshape(-1))


def test_hostile_frames_never_escape_never_publish_nan_and_the_next_good_frame_is_served(toy_shards, types, caplog):
    published = Published(types)
    logs: list[str] = []
    core = EncoderService(validate({"shards": str(toy_shards), "backend": "onnxruntime", "mode": "replicas",
                                     "image_topics": [BAD, GOOD]}),
                           open_publisher=lambda topic: published, now_s=time.time, warn=logs.append,
                           error=logs.append)
    rng = random.Random(SEED)
    cases, end = 0, time.monotonic() + SECONDS
    caplog.set_level(logging.ERROR)
    try:
        while time.monotonic() < end:
            cases += 1
            core.offer(BAD, hostile_message(rng, types, header(types, 0)))
            stamp = 1_000_000 + cases
            core.offer(GOOD, good_message(types, stamp))
            assert published.wait_for_stamp(stamp), f"seed {SEED} case {cases}: the good frame was not served"
    finally:
        core.close()
    totals = core.stats.totals()
    print(f"fuzz seed {SEED}: {cases} hostile frames, {totals}")
    assert cases >= 200, f"only {cases} cases in {SECONDS} s"
    assert published.non_finite == 0
    assert totals.get("errors", 0) == 0, f"seed {SEED}: hostile frames blamed on the encoder: {core.stats.last_error}"
    assert totals.get("bad_frames", 0) >= cases // 2, "most hostile frames should be refused as bad frames"
    assert "dispatcher pass failed" not in caplog.text and "Traceback" not in caplog.text


def test_corrupted_manifests_are_refused_in_one_line_or_encode_finite(toy_shards):
    original = json.loads((toy_shards / "manifest.json").read_text())
    rng = random.Random(SEED)
    image = np.random.default_rng(0).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    cases, opened, end = 0, 0, time.monotonic() + SECONDS
    target = toy_shards.parent / "mutant"
    target.mkdir(exist_ok=True)
    for shard in toy_shards.glob("*.onnx"):
        (target / shard.name).write_bytes(shard.read_bytes())
    while time.monotonic() < end:
        cases += 1
        (target / "manifest.json").write_bytes(corrupt_manifest(rng, original))
        try:
            manifest = load_manifest(target)
        except ManifestError as error:
            assert "\n" not in str(error), f"seed {SEED} case {cases}: multi-line error {error}"
            continue
        try:
            encoder = SiglipEncoder.open(manifest, backend="onnxruntime", mode="sequential")
        except (ManifestError, BackendError, ValueError) as error:
            assert "\n" not in str(error), f"seed {SEED} case {cases}: multi-line error {error}"
            continue
        opened += 1
        with encoder:
            try:
                vector = encoder.encode(image)
            except (EncoderOutputError, BackendError, ValueError, RuntimeError):
                continue  # a per-frame failure, on the frame's future: allowed, not silent
            assert np.isfinite(vector).all(), f"seed {SEED} case {cases}: non-finite embedding from a loaded manifest"
    print(f"fuzz seed {SEED}: {cases} corrupted manifests, {opened} of them opened")
    assert cases >= 200
