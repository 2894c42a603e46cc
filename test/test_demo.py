"""`make demo` (tools/demo.py) end to end on random:tiny: shards built then reused, the sample camera
bag holds the photos it claims, the replay writes one embedding per frame, and the printed table is consistent with
the output bag."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from repo_tools import TOOLS_DIR, load_tool
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from rk_siglip_ros.messages.camera_frames import image_from_message

demo = load_tool("demo")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_out")
    first, second = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(first):
        assert demo.main(["--model", "random:tiny", "--out", str(out)]) == 0
    with contextlib.redirect_stdout(second):
        assert demo.main(["--model", "random:tiny", "--out", str(out)]) == 0
    return out, first.getvalue(), second.getvalue()


def matrix_from(text: str) -> np.ndarray:
    block = text.split("cosine similarity\n", 1)[1].splitlines()[1:]
    rows = []
    for line in block:
        if not re.match(r"^\s*\d+\s+-?\d\.\d{3}", line):
            break
        rows.append([float(v) for v in line.split()[1:]])
    return np.array(rows)


def test_demo_prints_the_table_and_the_next_steps(demo_run):
    _, text, _ = demo_run
    assert "built in" in text
    assert re.search(r"frames\s+10 encoded of 10 in the bag \(0 skipped\)", text)
    assert re.search(r"embedding dim\s+64\n", text)
    assert re.search(r"throughput\s+\d+\.\d+ frames/s", text)
    assert "weights are RANDOM" in text and "similarities are meaningless" in text
    assert "build_shards --model google/siglip-base-patch16-512" in text
    assert "encode_bag /path/to/your_bag" in text
    assert len(re.findall(r"^\s+\d+\s+/(front|rear)/\S+\s+\d+\.\d{3}\s+\w+\s+\w+$", text, re.M)) == 10


def test_demo_table_matches_the_output_bag(demo_run):
    out, text, _ = demo_run
    printed = matrix_from(text)
    assert printed.shape == (10, 10)
    rows = demo.read_embeddings(out / "sample_camera_bag_siglip")
    assert len(rows) == 10
    vectors = np.stack([v / np.linalg.norm(v) for _, _, v in rows])
    np.testing.assert_allclose(printed, vectors @ vectors.T, atol=1.5e-3)
    # The astronaut is shot on both cameras (rgb8 and png): the same picture, so the same embedding.
    shots = [photo for _, photo, _ in demo.SAMPLE_SHOTS]
    first, second = (i for i, p in enumerate(shots) if p == "astronaut")
    assert printed[first, second] > 0.999
    assert np.min(printed) < 0.9  # different photos are told apart even by random weights


def test_demo_reuses_a_valid_build(demo_run):
    _, _, second = demo_run
    assert "reused a valid earlier build" in second


def test_sample_bag_holds_the_photos_it_claims(demo_run):
    out, _, _ = demo_run
    store = get_typestore(Stores.ROS2_JAZZY)
    with Reader(out / "sample_camera_bag") as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        messages = [(c.topic, store.deserialize_cdr(raw, c.msgtype)) for c, _, raw in reader.messages()]
    assert topics == {demo.FRONT_TOPIC: "sensor_msgs/msg/Image",
                      demo.REAR_TOPIC: "sensor_msgs/msg/CompressedImage"}
    assert len(messages) == len(demo.SAMPLE_SHOTS)
    for (topic, message), (shot_topic, photo, encoding) in zip(messages, demo.SAMPLE_SHOTS, strict=True):
        assert topic == shot_topic
        assert (message.format if topic == demo.REAR_TOPIC else message.encoding) == encoding
        assert message.header.frame_id == demo.FRAME_IDS[topic]
        expected = demo.sample_photo(photo, demo.CAMERA_SIZE[topic])
        if encoding == "mono8":
            expected = np.repeat(cv2.cvtColor(expected, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
        decoded = image_from_message(message).astype(int)
        error = np.abs(decoded - expected.astype(int)).mean()
        assert error < (6.0 if encoding == "jpeg" else 0.5), (photo, encoding, error)


def test_demo_labels_and_search_the_sample_bag(demo_run):
    out, text, _ = demo_run
    labels = demo.read_labels(out / "sample_camera_bag_siglip")
    assert len(labels) == len(demo.SAMPLE_SHOTS)  # one Classification per frame
    for results in labels.values():
        assert len(results) == demo.LABELS_TOP_K and {label for label, _ in results} <= set(demo.DEMO_LABELS)
        scores = [score for _, score in results]
        assert scores == sorted(scores, reverse=True)
    assert "best labels per frame (/siglip/labels, top 3 of 5)" in text
    assert f"query '{demo.SEARCH_QUERY}':" in text
    assert len(re.findall(r"^\s+[1-4]\s+\d+\.\d{9}\s+/(front|rear)/", text, re.M)) == demo.SEARCH_TOP
    assert (out / "search_sheet.png").stat().st_size > 0
    assert "label probabilities and search ranks are meaningless" in text
    assert 'search_bag your_bag_siglip "a red door"' in text


def test_ros_demo_without_ros_says_so_in_one_line():
    """`make ros-demo` where no ROS 2 is available: a clear line, exit 0 (test/ros runs the real thing)."""
    env = {**os.environ, "RK_SIGLIP_NO_ROS": "no ROS 2: source /opt/ros/<distro>/setup.bash"}
    result = subprocess.run([sys.executable, str(TOOLS_DIR / "ros_demo.py")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.strip().splitlines() == [
        "ros-demo: skipped, no ROS 2: source /opt/ros/<distro>/setup.bash. `make demo` runs the same bag through "
        "encode_bag without ROS."]
