"""Rosbag replay through the real node: a helper publishes a bag's messages with rclpy at the recorded timing
(serialized, as `ros2 bag play` does), and the node's embeddings equal what `encode_bag` writes for the same bag,
matched by header stamp. Bags: a rosbag2 written by real ROS 2 tooling (../shared/testdata) and one written here
with rosbags (raw rgb8 + compressed JPEG, sqlite3)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ros_support

ros_support.require_ros()

import cv2  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.rosbag2 import Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from rk_siglip_ros.bag import STORAGES, open_bag  # noqa: E402

REAL_BAG = ros_support.SHARED / "testdata" / "real-rosbag2" / "images.bag"
MESSAGE_TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}
EMBEDDING_ENCODING = "32FC1"


def write_camera_bag(path: Path, frames: int = 12, period_ns: int = 100_000_000) -> Path:
    """Two cameras at 10 Hz: /front/image_raw (rgb8, 64x48) and /rear/image_raw/compressed (JPEG, 80x60)."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    image, compressed = store.types["sensor_msgs/msg/Image"], store.types["sensor_msgs/msg/CompressedImage"]
    header, stamp = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    rng = np.random.default_rng(7)
    start = 1_700_000_000 * 10**9
    with Writer(path, version=9, storage_plugin=STORAGES["sqlite3"]) as writer:
        front = writer.add_connection("/front/image_raw", image.__msgtype__, typestore=store)
        rear = writer.add_connection("/rear/image_raw/compressed", compressed.__msgtype__, typestore=store)
        for index in range(frames):
            t = start + index * period_ns
            rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            msg = image(header=header(stamp=stamp(sec=t // 10**9, nanosec=t % 10**9), frame_id="front"),
                        height=48, width=64, encoding="rgb8", is_bigendian=0, step=64 * 3, data=rgb.reshape(-1))
            writer.write(front, t + 2_000_000, store.serialize_cdr(msg, image.__msgtype__))
            t_rear = t + 50_000_000
            ok, jpeg = cv2.imencode(".jpg", rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
            assert ok
            msg = compressed(header=header(stamp=stamp(sec=t_rear // 10**9, nanosec=t_rear % 10**9),
                                           frame_id="rear"), format="jpeg", data=jpeg.reshape(-1))
            writer.write(rear, t_rear + 3_000_000, store.serialize_cdr(msg, compressed.__msgtype__))
    return path


def play_bag(client: ros_support.RosClient, bag: Path) -> dict[str, int]:
    """Publish every image message of ``bag`` at its recorded log-time offsets, as serialized CDR (what
    `ros2 bag play` sends); returns messages per topic."""
    played: dict[str, int] = {}
    with open_bag(bag) as opened:  # rosbag2 only (rosbags' AnyReader takes a folder named *.bag for ROS 1)
        connections = [c for c in opened.reader.connections if c.msgtype in MESSAGE_TYPES]
        publishers = {c.topic: client.publisher(MESSAGE_TYPES[c.msgtype], c.topic) for c in connections}
        ros_support.wait_until_connected(client, list(publishers.values()))
        first_log_ns, start = None, time.monotonic()
        for connection, log_ns, raw in opened.reader.messages(connections=connections):
            first_log_ns = log_ns if first_log_ns is None else first_log_ns
            time.sleep(max(0.0, start + (log_ns - first_log_ns) * 1e-9 - time.monotonic()))
            publishers[connection.topic].publish(bytes(raw))
            played[connection.topic] = played.get(connection.topic, 0) + 1
    return played


def encode_bag_embeddings(bag: Path, out: Path, shards: Path) -> dict[tuple[int, int], np.ndarray]:
    """Run the `encode_bag` tool on ``bag``; its embeddings by source header stamp."""
    tool = Path(sys.executable).with_name("encode_bag")
    result = subprocess.run([str(tool), str(bag), str(out), "--shards", str(shards), "--backend", "onnxruntime"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    embeddings = {}
    with AnyReader([out]) as reader:
        for connection, _, raw in reader.messages():
            if connection.msgtype != "sensor_msgs/msg/Image":
                continue
            msg = reader.deserialize(raw, connection.msgtype)
            if msg.encoding == EMBEDDING_ENCODING:
                key = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
                embeddings[key] = np.frombuffer(bytes(msg.data), "<f4")
    return embeddings


def bag_topics(bag: Path) -> list[str]:
    with open_bag(bag) as opened:
        return sorted({c.topic for c in opened.reader.connections if c.msgtype in MESSAGE_TYPES})


@pytest.mark.parametrize("which", ["real-rosbag2", "written-here"])
def test_node_embeddings_equal_encode_bag_on_the_same_bag(
        which: str, installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient,
        tmp_path: Path) -> None:
    if which == "real-rosbag2":
        if not REAL_BAG.is_dir():
            pytest.skip(f"{REAL_BAG} is not there (the shared test data sits beside the repository)")
        bag = REAL_BAG
    else:
        bag = write_camera_bag(tmp_path / "cameras")
    expected = encode_bag_embeddings(bag, tmp_path / "encoded", tiny_shards)
    topics = bag_topics(bag)

    embeddings = client.collect(Image, ros_support.OUTPUT)
    node = ros_support.launch_node(installed_env, shards=str(tiny_shards), backend="onnxruntime",
                                   image_topics=f"[{', '.join(topics)}]")
    with ros_support.running(node):
        played = play_bag(client, bag)
        ros_support.wait_until(lambda: len(embeddings) >= sum(played.values()), 30)
        time.sleep(0.5)
        node.interrupt()
        assert node.wait() == 0, node.output

    assert embeddings, f"no embedding for {played}"
    stamps = [ros_support.stamp_key(msg.header) for _, msg in embeddings]
    assert len(set(stamps)) == len(stamps)
    # The node may skip a frame under load (newest frame wins); every embedding it did publish equals encode_bag's.
    for stamp, (_, msg) in zip(stamps, embeddings, strict=True):
        assert stamp in expected, f"embedding for stamp {stamp}, which encode_bag did not see"
        got = np.frombuffer(bytes(msg.data), "<f4")
        cosine = float(got @ expected[stamp] / (np.linalg.norm(got) * np.linalg.norm(expected[stamp])))
        assert cosine >= 0.99999, f"stamp {stamp}: cos {cosine:.7f}"
    assert len(embeddings) >= len(expected) // 2, f"{len(embeddings)} of {len(expected)} frames encoded"
