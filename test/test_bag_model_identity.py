"""Model identity in bags: encode_bag writes the node's VisionInfo beside its embeddings (latched QoS), and
search_bag and encode_text --for-bag read it: another model's embeddings are refused in one line, the same model's
are searched (with the shard set the VisionInfo names when no --shards is given)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from rk_siglip_ros.bag.io import open_bag
from rk_siglip_ros.bag.model import bag_vision_info
from rk_siglip_ros.bag.replay import encode_bag
from rk_siglip_ros.manifest import load_manifest
from rk_siglip_ros.messages.embedding_msg import embedding_fields
from rk_siglip_ros.messages.vision_info import (
    POOLED,
    VISION_INFO_MSG_TYPE,
    register_vision_info,
    vision_info_fields,
    vision_info_message,
)
from rk_siglip_ros.model_identity import ModelIdentity
from rk_siglip_ros.runtime.encoder import SiglipEncoder

STORE = get_typestore(Stores.ROS2_HUMBLE)
register_vision_info(STORE)
OTHER_MODEL = ModelIdentity(checkpoint="google/siglip-so400m-patch14-384", architecture="siglip", embedding_dim=1,
                            manifest_sha256="ab" * 32)


def header(index: int) -> object:
    return STORE.types["std_msgs/msg/Header"](
        stamp=STORE.types["builtin_interfaces/msg/Time"](sec=1_700_000_000 + index, nanosec=0), frame_id="cam0")


def write_recording(path: Path, width: int, identity: ModelIdentity | None, shards: str = "/elsewhere") -> Path:
    """A bag as `ros2 bag record` of the node holds: embeddings and, with ``identity``, the node's VisionInfo."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        if identity is not None:
            info = writer.add_connection("/siglip/vision_info", VISION_INFO_MSG_TYPE, typestore=STORE)
            message = vision_info_message(STORE, header(0), vision_info_fields(identity, POOLED, shards))
            writer.write(info, 10**18, STORE.serialize_cdr(message, VISION_INFO_MSG_TYPE))
        embeddings = writer.add_connection("/siglip/embeddings", "sensor_msgs/msg/Image", typestore=STORE)
        rng = np.random.default_rng(2)
        for index in range(3):
            vector = rng.normal(size=width).astype(np.float32)
            message = STORE.types["sensor_msgs/msg/Image"](header=header(index),
                                                           **embedding_fields(vector / np.linalg.norm(vector)))
            writer.write(embeddings, 10**18 + index + 1, STORE.serialize_cdr(message, "sensor_msgs/msg/Image"))
    return path


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from rk_siglip_ros.cli.{tool} import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def assert_refused(done: subprocess.CompletedProcess[str], tool: str, text: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: ") and text in lines[0], lines


def test_encode_bag_writes_the_vision_info_the_node_publishes(tiny_text_shards, tmp_path):
    source = tmp_path / "camera"
    with Writer(source, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        camera = writer.add_connection("/cam0/image_raw", "sensor_msgs/msg/Image", typestore=STORE)
        pixels = np.random.default_rng(3).integers(0, 255, (24, 32, 3), dtype=np.uint8)
        image = STORE.types["sensor_msgs/msg/Image"](header=header(0), height=24, width=32, encoding="rgb8",
                                                     is_bigendian=0, step=96, data=pixels.reshape(-1))
        writer.write(camera, 1_700_000_005 * 10**9, STORE.serialize_cdr(image, "sensor_msgs/msg/Image"))
    out = tmp_path / "encoded"
    with SiglipEncoder.open(tiny_text_shards, backend="onnxruntime") as encoder:
        encode_bag(source, out, encoder)
    manifest = load_manifest(tiny_text_shards)
    with open_bag(out) as bag:
        content = bag_vision_info(bag, "/siglip/embeddings")
    assert content is not None
    assert ModelIdentity(**content.identity_fields()) == ModelIdentity.of(manifest)
    assert content.shards == str(tiny_text_shards.resolve()) and content.embedding == POOLED
    assert content.database_version == ModelIdentity.of(manifest).database_version != 0
    with Reader(out) as reader:
        (connection,) = [c for c in reader.connections if c.topic == "/siglip/vision_info"]
        assert connection.msgcount == 1
        assert [q.durability for q in connection.ext.offered_qos_profiles] == [QosDurability.TRANSIENT_LOCAL]
        (_, log_time, _), = list(reader.messages([connection]))
        assert log_time == 1_700_000_005 * 10**9  # at the bag's start: played back before the embeddings


def test_search_bag_refuses_another_models_recording(tiny_text_shards, tmp_path):
    width = load_manifest(tiny_text_shards).model.embedding_dim
    other = write_recording(tmp_path / "other", width, dataclasses.replace(OTHER_MODEL, embedding_dim=width))
    done = run("search_bag", str(other), "a cat", "--shards", str(tiny_text_shards))
    assert_refused(done, "search_bag", "embeddings of different models cannot be compared")
    assert "google/siglip-so400m-patch14-384" in done.stderr


def test_search_bag_finds_the_shard_set_the_recording_names(tiny_text_shards, tmp_path):
    identity = ModelIdentity.of(load_manifest(tiny_text_shards))
    same = write_recording(tmp_path / "same", identity.embedding_dim, identity, str(tiny_text_shards))
    done = run("search_bag", str(same), "a cat")  # no --shards: the VisionInfo's database_location
    assert done.returncode == 0, done.stderr
    assert f"shard set {tiny_text_shards}" in done.stdout


@pytest.mark.parametrize("case", ["same", "other", "unnamed"])
def test_encode_text_for_bag_refuses_another_model(tiny_text_shards, tmp_path, case):
    identity = ModelIdentity.of(load_manifest(tiny_text_shards))
    other = dataclasses.replace(OTHER_MODEL, embedding_dim=identity.embedding_dim)  # same width, another model
    named = {"same": identity, "other": other, "unnamed": None}[case]
    bag = write_recording(tmp_path / case, identity.embedding_dim, named)
    out = tmp_path / "text.npy"
    done = run("encode_text", "--shards", str(tiny_text_shards), "--out", str(out), "--for-bag", str(bag), "a cat")
    if case == "same":
        assert done.returncode == 0, done.stderr
        assert np.load(out).shape == (1, identity.embedding_dim)
        return
    assert_refused(done, "encode_text", {"other": "embeddings of different models cannot be compared",
                                         "unnamed": "has no /siglip/vision_info"}[case])
    assert not out.exists()
