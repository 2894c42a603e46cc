"""Command-line tools under faults: one exit-code
convention, undecodable frames skipped, truncated recordings refused with a way out, leftovers of killed runs
cleaned, bag definitions that do not parse reported instead of swallowed."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from test_bag_cli import write_bag
from test_image_header import png, png_bomb, with_png_size

from rk_siglip_ros.bag import EMBEDDING_TOPIC
from rk_siglip_ros.bag.output import OWNER_FILE, UNOWNED_STALE_AFTER_S, remove_stale_stages
from rk_siglip_ros.cli.bench import main as bench_main
from rk_siglip_ros.cli.build_shards import main as build_shards_main
from rk_siglip_ros.cli.encode_bag import main as encode_bag
from rk_siglip_ros.cli.encode_images import main as encode_images

STORE = get_typestore(Stores.ROS2_HUMBLE)


@pytest.fixture(scope="module")
def shards(shard_factory) -> Path:
    return shard_factory(model="random:tiny", profile="pipeline3", formats=("onnx",))


def compressed_bag(path: Path, payloads: list[bytes]) -> None:
    """One CompressedImage per payload on /cam/image_raw/compressed (png format)."""
    header_class, time_class = STORE.types["std_msgs/msg/Header"], STORE.types["builtin_interfaces/msg/Time"]
    image_class = STORE.types["sensor_msgs/msg/CompressedImage"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                                           typestore=STORE)
        for index, payload in enumerate(payloads):
            header = header_class(stamp=time_class(sec=100 + index, nanosec=0), frame_id="cam")
            message = image_class(header=header, format="png", data=np.frombuffer(payload, np.uint8).copy())
            writer.write(connection, 10**18 + index, STORE.serialize_cdr(message, "sensor_msgs/msg/CompressedImage"))


def embeddings_in(path: Path) -> int:
    with Reader(path) as reader:
        return sum(1 for connection, _, _ in reader.messages() if connection.topic == EMBEDDING_TOPIC)


# ------------------------------------------------------------------------------------------- frames


def test_undecodable_and_oversized_frames_are_skipped_not_fatal(tmp_path, shards, capsys):
    ok, good = cv2.imencode(".png", np.full((20, 30, 3), 90, np.uint8))
    assert ok
    payloads = [good.tobytes(), with_png_size(png(8, 8), 100_000, 100_000), png_bomb(3000, 3000), good.tobytes()]
    compressed_bag(tmp_path / "in", payloads)
    status = encode_bag([str(tmp_path / "in"), str(tmp_path / "out"), "--shards", str(shards), "--backend",
                         "onnxruntime", "--no-progress", "--max-image-pixels", "5000000", "--cores", "0,1"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert embeddings_in(tmp_path / "out") == 2
    assert "skipped frames   2" in out and out.count("above the limit of 5 MP") == 2 and "10000.0 MP" in out


# ------------------------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize("tool", [encode_bag, encode_images, bench_main, build_shards_main])
def test_every_tool_documents_the_exit_codes_in_help(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0" in text and "2 bad arguments" in text
    if tool is not build_shards_main:
        assert "130 interrupted" in text and "--cores" in text and "--backend" in text


def test_a_broken_shard_set_is_exit_2_in_every_tool(tmp_path, shards, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_bytes(b"\xff\xfe not utf-8")
    write_bag(tmp_path / "bag")
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(16, 16))
    assert encode_bag([str(tmp_path / "bag"), str(tmp_path / "out"), "--shards", str(broken), "--no-progress"]) == 2
    assert encode_images(["--shards", str(broken), str(photo), "--out", str(tmp_path / "x.npy")]) == 2
    assert bench_main(["--shards", str(broken), "--backend", "sim", "--frames", "1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all("not UTF-8" in line and "error:" in line for line in errors)


def test_an_internal_error_is_exit_1_with_a_traceback_not_a_setup_error(tmp_path, shards, capsys, monkeypatch):
    """A bug (here: replay raising AttributeError) used to be reported as a one-line setup error with exit 2."""
    import rk_siglip_ros.cli.encode_bag as cli

    def broken_replay(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'header'")

    monkeypatch.setattr(cli, "replay", broken_replay)
    write_bag(tmp_path / "bag")
    status = encode_bag([str(tmp_path / "bag"), str(tmp_path / "out"), "--shards", str(shards), "--backend",
                         "onnxruntime", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" in err and "internal error" in err and "this is a bug" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- leftovers


def test_stale_staging_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def stage(suffix: str, owner: str | None, age_s: float = 0.0) -> Path:
        folder = tmp_path / f".out.partial-{suffix}"
        folder.mkdir()
        if owner is not None:
            (folder / OWNER_FILE).write_text(owner)
        stamp = time.time() - age_s
        os.utime(folder, (stamp, stamp))
        return folder

    import socket

    host = socket.gethostname()
    killed = stage("killed", f"{dead.pid} {host}")
    running = stage("running", f"{os.getpid()} {host}")
    other_host = stage("elsewhere", "1 some-other-host")
    fresh_unowned = stage("fresh", None)
    old_unowned = stage("old", None, age_s=UNOWNED_STALE_AFTER_S + 60)
    unrelated = tmp_path / ".other.partial-x"
    unrelated.mkdir()
    assert remove_stale_stages(out) == sorted([killed, old_unowned])
    assert all(path.is_dir() for path in (running, other_host, fresh_unowned, unrelated))
    assert not killed.exists() and not old_unowned.exists()


def test_encode_bag_cleans_up_after_a_killed_run(tmp_path, shards, capsys):
    write_bag(tmp_path / "bag")
    sigkilled = subprocess.Popen([sys.executable, "-c", "pass"])
    sigkilled.wait()
    leftover = tmp_path / ".out.partial-abc123"
    (leftover / "out").mkdir(parents=True)
    import socket

    (leftover / OWNER_FILE).write_text(f"{sigkilled.pid} {socket.gethostname()}\n")
    assert encode_bag([str(tmp_path / "bag"), str(tmp_path / "out"), "--shards", str(shards), "--backend",
                       "onnxruntime", "--no-progress"]) == 0
    assert f"cleaned up       {leftover}" in capsys.readouterr().out
    assert not leftover.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bag", "out"]


def test_a_truncated_mcap_is_refused_with_how_to_recover_it(tmp_path, shards, capsys):
    write_bag(tmp_path / "bag", frames=20)
    recording = next((tmp_path / "bag").glob("*.mcap"))
    data = recording.read_bytes()
    recording.write_bytes(data[: len(data) * 2 // 3])  # power cut: no summary, no end magic
    for target in (tmp_path / "bag", recording):
        assert encode_bag([str(target), str(tmp_path / "out"), "--shards", str(shards), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"mcap recover {recording} -o recovered.mcap" in err


def test_a_bag_folder_without_metadata_says_how_to_rebuild_it(tmp_path, shards, capsys):
    write_bag(tmp_path / "bag")
    (tmp_path / "bag" / "metadata.yaml").unlink()
    assert encode_bag([str(tmp_path / "bag"), str(tmp_path / "out"), "--shards", str(shards), "--no-progress"]) == 2
    assert "ros2 bag reindex" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- definitions


def test_a_bag_definition_that_does_not_parse_is_reported_not_swallowed(tmp_path, shards, capsys):
    path = tmp_path / "bag"
    write_bag(path)
    with Writer(tmp_path / "broken", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        with Reader(path) as reader:
            for connection in reader.connections:
                added = writer.add_connection(connection.topic, connection.msgtype, typestore=STORE)
                for _, timestamp, raw in reader.messages([connection]):
                    writer.write(added, timestamp, raw)
        odd = writer.add_connection("/odd", "odd_msgs/msg/Odd", msgdef="int32 x\n%%% not a field\n",
                                    rihs01="RIHS01_" + "0" * 64)
        writer.write(odd, 10**18, struct.pack("<4sI", b"\x00\x01\x00\x00", 7))
    assert encode_bag([str(tmp_path / "broken"), str(tmp_path / "out"), "--shards", str(shards), "--backend",
                       "onnxruntime", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bag definition   odd_msgs/msg/Odd did not parse (Could not parse" in out


def test_png_bomb_helper_really_declares_what_it_says():
    bomb = png_bomb(3000, 3000)
    width, height = struct.unpack(">II", bomb[16:24])
    assert (width, height) == (3000, 3000) and zlib.crc32(bomb[12:29]) & 0xFFFFFFFF == struct.unpack(">I",
                                                                                                     bomb[29:33])[0]
