"""The encode_bag console script: --help, one-line errors with exit 2 for bad input, --force, and no OUT that looks
complete after an interrupted or failed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from rk_siglip_ros.bag import EMBEDDING_TOPIC, encode_bag
from rk_siglip_ros.cli.encode_bag import main
from rk_siglip_ros.runtime.encoder import SiglipEncoder

STORE = get_typestore(Stores.ROS2_JAZZY)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rk_siglip_ros.cli.encode_bag", *args], capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(completed: subprocess.CompletedProcess[str]) -> str:
    assert completed.returncode == 2, (completed.returncode, completed.stdout, completed.stderr)
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("encode_bag: error: ")
    return lines[0]


def write_bag(path: Path, frames: int = 3, size: tuple[int, int] = (32, 40), with_images: bool = True) -> None:
    image_class = STORE.types["sensor_msgs/msg/Image"]
    header_class, time_class = STORE.types["std_msgs/msg/Header"], STORE.types["builtin_interfaces/msg/Time"]
    rng = np.random.default_rng(0)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        notes = writer.add_connection("/notes", "std_msgs/msg/String", typestore=STORE)
        camera = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=STORE) \
            if with_images else None
        for index in range(frames):
            log_ns = 10**18 + index * 10**8
            writer.write(notes, log_ns, STORE.serialize_cdr(STORE.types["std_msgs/msg/String"](data=str(index)),
                                                             "std_msgs/msg/String"))
            if camera is not None:
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                header = header_class(stamp=time_class(sec=log_ns // 10**9, nanosec=index), frame_id="cam")
                message = image_class(header=header, height=size[0], width=size[1], encoding="rgb8", is_bigendian=0,
                                      step=size[1] * 3, data=pixels.reshape(-1))
                writer.write(camera, log_ns, STORE.serialize_cdr(message, "sensor_msgs/msg/Image"))


@pytest.fixture(scope="module")
def shards(shard_factory) -> Path:
    return shard_factory(model="random:tiny", profile="pipeline3", formats=("onnx",))


@pytest.fixture()
def camera_bag(tmp_path) -> Path:
    path = tmp_path / "camera_bag"
    write_bag(path)
    return path


def test_help_explains_the_options():
    completed = run_cli("--help")
    assert completed.returncode == 0
    for option in ("--shards", "--topics", "--backend", "--mode", "--storage", "--force", "/siglip/embeddings"):
        assert option in completed.stdout


def test_missing_input(tmp_path):
    line = one_line_error(run_cli(str(tmp_path / "nope"), str(tmp_path / "out"), "--shards", str(tmp_path)))
    assert "no such bag" in line


def test_a_folder_that_is_not_a_bag(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    line = one_line_error(run_cli(str(folder), str(tmp_path / "out"), "--shards", str(tmp_path)))
    assert "not a rosbag2" in line and "metadata.yaml" in line


def test_a_garbage_storage_file(tmp_path):
    fake = tmp_path / "fake.db3"
    fake.write_bytes(b"definitely not sqlite" * 10)
    line = one_line_error(run_cli(str(fake), str(tmp_path / "out"), "--shards", str(tmp_path)))
    assert "not a readable rosbag2" in line


def test_a_ros1_bag_gets_a_conversion_hint(tmp_path):
    ros1 = tmp_path / "old.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n" + bytes(64))
    line = one_line_error(run_cli(str(ros1), str(tmp_path / "out"), "--shards", str(tmp_path)))
    assert "ROS 1" in line and "rosbags-convert" in line


def test_a_bag_without_image_topics(tmp_path):
    bag = tmp_path / "notes_only"
    write_bag(bag, with_images=False)
    line = one_line_error(run_cli(str(bag), str(tmp_path / "out"), "--shards", str(tmp_path)))
    assert "no image topics" in line and "/notes" in line
    assert not (tmp_path / "out").exists()


def test_unknown_or_non_image_topic(tmp_path, camera_bag):
    line = one_line_error(run_cli(str(camera_bag), str(tmp_path / "out"), "--shards", str(tmp_path),
                                  "--topics", "/nope"))
    assert "/nope is not in the bag" in line and "/camera/image_raw" in line
    line = one_line_error(run_cli(str(camera_bag), str(tmp_path / "out"), "--shards", str(tmp_path),
                                  "--topics", "/notes"))
    assert "std_msgs/msg/String, not an image" in line


def test_output_exists_is_refused_without_force(tmp_path, camera_bag):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = one_line_error(run_cli(str(camera_bag), str(out), "--shards", str(tmp_path)))
    assert line == f"encode_bag: error: {out} exists; pass --force to overwrite"
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces bags and files only, never an arbitrary folder
    line = one_line_error(run_cli(str(camera_bag), str(out), "--shards", str(tmp_path), "--force"))
    assert "not a rosbag2" in line
    assert (out / "keep.txt").read_text() == "mine"


def test_output_inside_the_input_is_refused(tmp_path, camera_bag):
    line = one_line_error(run_cli(str(camera_bag), str(camera_bag / "out"), "--shards", str(tmp_path)))
    assert "must not be the input" in line


def test_bad_shards_folder(tmp_path, camera_bag):
    line = one_line_error(run_cli(str(camera_bag), str(tmp_path / "out"), "--shards", str(tmp_path / "none")))
    assert "manifest.json" in line
    assert not (tmp_path / "out").exists()


def test_force_replaces_an_earlier_output(tmp_path, camera_bag, shards, capsys):
    out = tmp_path / "out"
    assert main([str(camera_bag), str(out), "--shards", str(shards), "--backend", "onnxruntime",
                 "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "frames encoded   3" in summary and "skipped frames   0" in summary
    first = sorted(p.name for p in out.iterdir())
    assert main([str(camera_bag), str(out), "--shards", str(shards), "--backend", "onnxruntime",
                 "--no-progress", "--force", "--storage", "sqlite3"]) == 0
    assert sorted(p.name for p in out.iterdir()) != first  # now an sqlite3 bag
    with Reader(out) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts == {"/notes": 3, "/camera/image_raw": 3, EMBEDDING_TOPIC: 3, "/siglip/vision_info": 1}
    assert not list(tmp_path.glob(".out.*"))  # no staging or backup folders left behind


def test_an_encoded_bag_is_not_encoded_twice(tmp_path, camera_bag, shards):
    out, again = tmp_path / "out", tmp_path / "again"
    assert main([str(camera_bag), str(out), "--shards", str(shards), "--no-progress"]) == 0
    line = one_line_error(run_cli(str(out), str(again), "--shards", str(shards)))
    assert "already has /siglip/embeddings" in line


class InterruptingEncoder:
    """The real encoder, with a Ctrl-C arriving while the n-th frame is submitted (fault injection)."""

    def __init__(self, encoder: SiglipEncoder, after: int, error: type[BaseException] = KeyboardInterrupt) -> None:
        self.encoder, self.after, self.error, self.count = encoder, after, error, 0
        self.embedding_dim, self.capacity = encoder.embedding_dim, encoder.capacity

    def submit(self, image: np.ndarray, tokens: bool = False):
        self.count += 1
        if self.count > self.after:
            raise self.error("stop")
        return self.encoder.submit(image)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_run_leaves_no_output(tmp_path, shards, error):
    bag = tmp_path / "long_bag"
    write_bag(bag, frames=12)
    out = tmp_path / "out"
    with SiglipEncoder.open(shards, backend="onnxruntime") as encoder, pytest.raises(error):
        encode_bag(bag, out, InterruptingEncoder(encoder, after=5, error=error))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long_bag"]


def test_sigint_to_the_console_script_leaves_no_output(tmp_path, shards):
    """A real signal to a real process: it exits 130 and leaves neither OUT nor its staging folder."""
    bag = tmp_path / "long_bag"
    write_bag(bag, frames=200, size=(240, 320))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "rk_siglip_ros.cli.encode_bag", str(bag), str(out),
                                # The sim's NPU timing (tens of ms per shard call, one frame at a time) keeps the run
                                # going for seconds however idle or loaded the machine is, so the signal lands mid-run.
                                "--shards", str(shards), "--backend", "sim", "--mode", "sequential", "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # Ctrl-C as a user's terminal delivers it. A test run started in the background of a
                               # non-interactive shell inherits SIGINT ignored, and Python then keeps ignoring it.
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if process.poll() is not None:
        pytest.fail(f"encode_bag ended before it could be interrupted: {process.communicate()}")
    os.kill(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, (stdout, stderr)
    assert "interrupted" in stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long_bag"]


def test_the_replay_path_imports_no_torch_transformers_rknn_or_rclpy():
    """The bag tool is runtime code: it must run on a robot that has none of the builder's heavy stack."""
    code = ("import sys, rk_siglip_ros.bag, rk_siglip_ros.cli.encode_bag, rk_siglip_ros.runtime.encoder\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'rknn', 'rclpy'}))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
