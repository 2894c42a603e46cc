"""encode_bag end to end on real rosbag2 files written with rosbags: both storages, Humble and Jazzy typestores,
raw and compressed encodings on two topics, one corrupt frame, a non-image topic, and a bag written by real ROS 2
tooling. The encoder is the real one (ONNX Runtime on a tiny random SigLIP shard set)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from ruamel.yaml import YAML

from rk_siglip_ros.bag import EMBEDDING_TOPIC, check_request, encode_bag, replay
from rk_siglip_ros.messages.camera_frames import image_from_message
from rk_siglip_ros.messages.embedding_msg import embedding_from_message
from rk_siglip_ros.runtime.encoder import SiglipEncoder

FRONT, REAR, NOTES = "/cam/front/image_raw", "/cam/rear/image_raw/compressed", "/notes"
REAL_BAG = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "real-rosbag2" / "images.bag"
SENSOR_QOS = Qos(QosHistory.KEEP_LAST, 5, QosReliability.BEST_EFFORT, QosDurability.VOLATILE, QosTime(0, 0),
                 QosTime(0, 0), QosLiveliness.AUTOMATIC, QosTime(0, 0), False)
COS_MIN = 0.9999


@dataclass(frozen=True)
class Written:
    topic: str
    log_ns: int
    stamp: tuple[int, int]
    frame_id: str
    good: bool  # an image the encoder must embed


def _photo(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat")
    return cv2.resize(getattr(data, names[index % len(names)])(), (width, height), interpolation=cv2.INTER_AREA)


def _raw(store, header, rgb: np.ndarray, encoding: str):
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[..., ::-1]
    elif encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding == "rgba8_padded":  # rows padded past width * 4: step must be honoured
        rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
        pixels = np.zeros((rgb.shape[0], rgb.shape[1] * 4 + 12), np.uint8)
        pixels[:, : rgb.shape[1] * 4] = rgba.reshape(rgb.shape[0], -1)
        encoding = "rgba8"
    elif encoding == "mono16":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    else:
        raise AssertionError(encoding)
    pixels = np.ascontiguousarray(pixels)
    return store.types["sensor_msgs/msg/Image"](
        header=header, height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, is_bigendian=0,
        step=pixels.strides[0], data=pixels.reshape(-1).view(np.uint8))


def _compressed(store, header, rgb: np.ndarray, fmt: str):
    if fmt == "corrupt":
        data = np.frombuffer(b"\xff\xd8\xff\xe0 this is not a jpeg at all", np.uint8)
        fmt = "jpeg"
    else:
        ok, buffer = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        data = buffer.reshape(-1)
    return store.types["sensor_msgs/msg/CompressedImage"](header=header, format=fmt, data=data)


FRONT_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8_padded", "mono16")
REAR_FORMATS = ("jpeg", "png", "corrupt", "jpeg")


def write_camera_bag(path: Path, storage: StoragePlugin, distro: Stores) -> list[Written]:
    """Two cameras interleaved (raw Image in 5 encodings, CompressedImage jpeg/png and one corrupt frame) and a
    String topic; header stamps trail log times by 3 ms so a copied header is told apart from a made-up one."""
    store = get_typestore(distro)
    header_class, time_class = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    written: list[Written] = []
    with Writer(path, version=9, storage_plugin=storage) as writer:
        front = writer.add_connection(FRONT, "sensor_msgs/msg/Image", typestore=store,
                                      offered_qos_profiles=[SENSOR_QOS])
        rear = writer.add_connection(REAR, "sensor_msgs/msg/CompressedImage", typestore=store)
        notes = writer.add_connection(NOTES, "std_msgs/msg/String", typestore=store)
        for index in range(max(len(FRONT_ENCODINGS), len(REAR_FORMATS))):
            for camera, kinds, connection, frame_id in ((0, FRONT_ENCODINGS, front, "front_optical"),
                                                        (1, REAR_FORMATS, rear, "rear_optical")):
                if index >= len(kinds):
                    continue
                log_ns = 1_700_000_000_000_000_000 + index * 100_000_000 + camera * 50_000_000
                stamp_ns = log_ns - 3_000_000
                stamp = (stamp_ns // 10**9, stamp_ns % 10**9)
                header = header_class(stamp=time_class(sec=stamp[0], nanosec=stamp[1]), frame_id=frame_id)
                rgb = _photo(index + camera)
                build = _raw if camera == 0 else _compressed
                message = build(store, header, rgb, kinds[index])
                writer.write(connection, log_ns, store.serialize_cdr(message, connection.msgtype))
                written.append(Written(connection.topic, log_ns, stamp, frame_id, kinds[index] != "corrupt"))
            if index % 2 == 0:
                note = store.types["std_msgs/msg/String"](data=f"note {index}")
                writer.write(notes, 1_700_000_000_000_000_000 + index * 100_000_000 + 10,
                             store.serialize_cdr(note, "std_msgs/msg/String"))
    return written


def read_all(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    with Reader(path) as reader:
        out: dict[str, list[tuple[int, bytes]]] = {}
        for connection, log_ns, raw in reader.messages():
            out.setdefault(connection.topic, []).append((log_ns, bytes(raw)))
    return out


def connection_info(path: Path) -> dict[str, tuple[str, list]]:
    with Reader(path) as reader:
        return {c.topic: (c.msgtype, list(c.ext.offered_qos_profiles)) for c in reader.connections}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def shards(shard_factory) -> Path:
    return shard_factory(model="random:tiny", profile="pipeline3", formats=("onnx",))


@pytest.fixture(scope="module")
def encoder(shards):
    with SiglipEncoder.open(shards, backend="onnxruntime", mode="pipeline") as opened:
        yield opened


STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}


@pytest.mark.parametrize(("storage", "distro"), [("mcap", "jazzy"), ("sqlite3", "humble"), ("mcap", "humble"),
                                                 ("sqlite3", "jazzy")])
def test_encode_bag_embeds_every_good_frame_and_copies_the_rest(tmp_path, encoder, storage, distro):
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    source = tmp_path / "camera_bag"
    written = write_camera_bag(source, plugin, STORES[distro])
    out = tmp_path / "out"

    summary = encode_bag(source, out, encoder)

    good = [w for w in written if w.good]
    assert summary.frames == len(good)
    assert [(s.topic, s.log_time_ns) for s in summary.skipped] == [(w.topic, w.log_ns) for w in written
                                                                     if not w.good]
    assert "corrupt compressed image" in summary.skipped[0].reason
    assert summary.storage == storage
    assert sorted(summary.image_topics) == sorted([FRONT, REAR])

    # The original topics are intact: same bytes, same log times, same types, same QoS.
    before, after = read_all(source), read_all(out)
    for topic in (FRONT, REAR, NOTES):
        assert after[topic] == before[topic], topic
    infos_in, infos_out = connection_info(source), connection_info(out)
    for topic in (FRONT, REAR, NOTES):
        assert infos_out[topic] == infos_in[topic]
    assert infos_out[EMBEDDING_TOPIC][0] == "sensor_msgs/msg/Image"
    assert list(out.glob("*.mcap" if storage == "mcap" else "*.db3"))
    custom = YAML(typ="safe").load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["custom_data"]
    assert custom["rk_siglip_ros.model"] == "random:tiny"
    assert custom["rk_siglip_ros.embedding_topic"] == EMBEDDING_TOPIC

    # One embedding per good frame, in source order, with the source's header and log time.
    store = get_typestore(Stores.ROS2_JAZZY)
    embeddings = [store.deserialize_cdr(raw, "sensor_msgs/msg/Image") for _, raw in after[EMBEDDING_TOPIC]]
    assert [t for t, _ in after[EMBEDDING_TOPIC]] == [w.log_ns for w in good]
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in embeddings] == [w.stamp for w in good]
    assert [m.header.frame_id for m in embeddings] == [w.frame_id for w in good]
    assert all(m.encoding == "32FC1" and m.height == 1 and m.width == encoder.embedding_dim for m in embeddings)

    # Each embedding equals the encoder run directly on the same decoded source image.
    sources = [store.deserialize_cdr(raw, "sensor_msgs/msg/Image" if topic == FRONT else
                                     "sensor_msgs/msg/CompressedImage")
               for topic in (FRONT, REAR) for _, raw in before[topic]]
    by_stamp = {}
    for message in sources:
        try:
            by_stamp[(message.header.stamp.sec, message.header.stamp.nanosec)] = image_from_message(message)
        except ValueError:
            pass
    for message in embeddings:
        vector = embedding_from_message(message)[0]
        expected = encoder.encode(by_stamp[(message.header.stamp.sec, message.header.stamp.nanosec)])
        assert cosine(vector, expected) >= COS_MIN
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-4
    # Different photos give different embeddings (the test would pass vacuously on a constant encoder otherwise).
    vectors = np.stack([embedding_from_message(m)[0] for m in embeddings])
    assert len({tuple(np.round(v, 5)) for v in vectors}) > len(vectors) // 2


def test_embeddings_equal_encode_images_on_the_decoded_frames(tmp_path, encoder, shards):
    """The bag tool and the `encode_images` console script agree on the same decoded images."""
    source, out = tmp_path / "camera_bag", tmp_path / "out"
    write_camera_bag(source, StoragePlugin.MCAP, Stores.ROS2_JAZZY)
    encode_bag(source, out, encoder, topics=[FRONT])
    store = get_typestore(Stores.ROS2_JAZZY)
    messages = read_all(out)
    images = tmp_path / "images"
    images.mkdir()
    for index, (_, raw) in enumerate(messages[FRONT]):
        rgb = image_from_message(store.deserialize_cdr(raw, "sensor_msgs/msg/Image"))
        assert cv2.imwrite(str(images / f"frame_{index:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    result = tmp_path / "embeddings.npy"
    completed = subprocess.run(
        [sys.executable, "-m", "rk_siglip_ros.cli.encode_images", *sorted(str(p) for p in images.glob("*.png")),
         "--shards", str(shards), "--backend", "onnxruntime", "--out", str(result)],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    reference = np.load(result)
    bag_vectors = [embedding_from_message(store.deserialize_cdr(raw, "sensor_msgs/msg/Image"))[0]
                   for _, raw in messages[EMBEDDING_TOPIC]]
    assert len(bag_vectors) == len(messages[FRONT]) == reference.shape[0]
    for vector, expected in zip(bag_vectors, reference, strict=True):
        assert cosine(vector, expected) >= COS_MIN


def test_topics_option_encodes_only_the_chosen_topic(tmp_path, encoder):
    source, out = tmp_path / "camera_bag", tmp_path / "out"
    written = write_camera_bag(source, StoragePlugin.SQLITE3, Stores.ROS2_HUMBLE)
    summary = encode_bag(source, out, encoder, topics=[REAR], storage="mcap")
    assert summary.image_topics == [REAR]
    assert summary.frames == sum(w.good for w in written if w.topic == REAR)
    assert list(out.glob("*.mcap"))
    after = read_all(out)
    assert len(after[FRONT]) == sum(w.topic == FRONT for w in written)  # still copied through


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_a_checked_plan_replays_the_bag_it_opened(tmp_path, encoder, storage):
    """check_request opens and checks the bag once; replay reads that open bag (moved away, the run still works)."""
    source, out = tmp_path / "camera_bag", tmp_path / "out"
    written = write_camera_bag(source, storage, Stores.ROS2_HUMBLE)
    with check_request(source, out, topics=[FRONT]) as plan:
        assert plan.image_topics == [FRONT] and plan.output == out
        moved = source.rename(tmp_path / "moved_away")  # opening `source` again would now fail: no such bag
        summary = replay(plan, encoder)
    assert summary.image_topics == [FRONT]
    assert summary.frames == sum(w.good for w in written if w.topic == FRONT)
    assert read_all(out)[NOTES] == read_all(moved)[NOTES]


def _real_bag_checks(tmp_path: Path, source: Path, encoder) -> None:
    out = tmp_path / "real_out"
    summary = encode_bag(source, out, encoder)
    assert summary.frames == 3 and not summary.skipped
    assert summary.typestore == "humble"  # metadata v5 records no distro and carries no definitions
    after = read_all(out)
    store = get_typestore(Stores.ROS2_HUMBLE)
    sources = [store.deserialize_cdr(raw, "sensor_msgs/msg/Image") for _, raw in after["/image"]]
    embeddings = [store.deserialize_cdr(raw, "sensor_msgs/msg/Image") for _, raw in after[EMBEDDING_TOPIC]]
    assert [m.header.frame_id for m in embeddings] == ["camera_optical_frame"] * 3
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in embeddings] == \
        [(m.header.stamp.sec, m.header.stamp.nanosec) for m in sources]
    assert [t for t, _ in after[EMBEDDING_TOPIC]] == [t for t, _ in after["/image"]]
    assert after["/image"] == read_all(source)["/image"]
    for source_message, message in zip(sources, embeddings, strict=True):
        expected = encoder.encode(image_from_message(source_message))
        assert cosine(embedding_from_message(message)[0], expected) >= COS_MIN


def test_reads_the_real_ros2_bag_in_place(tmp_path, encoder):
    """The folder name ends in .bag (not a ROS 1 bag) and the input is read-only: nothing is written beside it."""
    if not REAL_BAG.is_dir():
        pytest.skip(f"shared test data not found at {REAL_BAG} (CI keeps shared/ beside the clone)")
    listing = sorted(p.name for p in REAL_BAG.iterdir())
    _real_bag_checks(tmp_path, REAL_BAG, encoder)
    assert sorted(p.name for p in REAL_BAG.iterdir()) == listing


def test_reads_a_copy_of_the_real_ros2_bag(tmp_path, encoder):
    if not REAL_BAG.is_dir():
        pytest.skip(f"shared test data not found at {REAL_BAG} (CI keeps shared/ beside the clone)")
    copy = tmp_path / "images.bag"
    shutil.copytree(REAL_BAG, copy)
    _real_bag_checks(tmp_path, copy, encoder)


def test_frames_are_in_flight_on_all_three_cores(tmp_path, shards):
    """With the NPU timing simulation (encoding slower than decoding, as on the board) the replay keeps several
    frames in flight: shard runs of different frames overlap in time on different cores."""
    source = tmp_path / "camera_bag"
    write_camera_bag(source, StoragePlugin.MCAP, Stores.ROS2_JAZZY)
    with SiglipEncoder.open(shards, backend="sim", mode="pipeline", time_scale=0.2, trace=True) as simulated:
        summary = encode_bag(source, tmp_path / "out", simulated)
        events = list(simulated.scheduler.trace)
    assert summary.frames == 8
    assert {event.core for event in events} == {0, 1, 2}
    overlapping = [(a, b) for a in events for b in events
                   if a.frame != b.frame and a.core != b.core and a.start < b.end and b.start < a.end]
    assert overlapping, "no two frames were ever encoded at the same time"


def test_a_custom_message_type_is_copied_with_the_bags_own_definition(tmp_path, encoder):
    """A type no distro knows, defined only inside the bag, is read and written back with that definition."""
    from rosbags.typesys import get_types_from_msg

    store = get_typestore(Stores.ROS2_HUMBLE)
    definition = "std_msgs/Header header\nfloat64 battery_volts\nstring[] warnings\n"
    store.register(get_types_from_msg(definition, "robot_msgs/msg/Status"))
    source = tmp_path / "custom_bag"
    with Writer(source, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        status = writer.add_connection("/status", "robot_msgs/msg/Status", typestore=store)
        camera = writer.add_connection(FRONT, "sensor_msgs/msg/Image", typestore=store)
        header = store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=5, nanosec=7),
                                                    frame_id="base")
        message = store.types["robot_msgs/msg/Status"](header=header, battery_volts=24.5, warnings=["hot"])
        writer.write(status, 5 * 10**9, store.serialize_cdr(message, "robot_msgs/msg/Status"))
        writer.write(camera, 5 * 10**9 + 1, store.serialize_cdr(_raw(store, header, _photo(0), "rgb8"),
                                                                "sensor_msgs/msg/Image"))
    out = tmp_path / "out"
    summary = encode_bag(source, out, encoder, typestore="jazzy")
    assert summary.frames == 1 and not summary.dropped_topics
    assert read_all(out)["/status"] == read_all(source)["/status"]
    with Reader(out) as reader:
        copied = next(c for c in reader.connections if c.topic == "/status")
        assert "float64 battery_volts" in copied.msgdef.data
    from rosbags.highlevel import AnyReader  # reads types from the bag alone: the definition must be complete

    with AnyReader([out]) as reader:
        connection = next(c for c in reader.connections if c.topic == "/status")
        _, _, raw = next(reader.messages([connection]))
        decoded = reader.deserialize(raw, connection.msgtype)
    assert decoded.battery_volts == 24.5 and list(decoded.warnings) == ["hot"]


@pytest.mark.parametrize(("mode", "storage"), [("MESSAGE", "sqlite3"), ("FILE", "sqlite3"), ("STORAGE", "mcap")])
def test_zstd_compressed_input(tmp_path, encoder, mode, storage):
    from rosbags.rosbag2 import CompressionFormat, CompressionMode

    plain, packed = tmp_path / "plain", tmp_path / "packed"
    written = write_camera_bag(plain, StoragePlugin.MCAP, Stores.ROS2_JAZZY)
    writer = Writer(packed, version=9, storage_plugin=StoragePlugin[storage.upper()])
    writer.set_compression(CompressionMode[mode], CompressionFormat.ZSTD)
    with Reader(plain) as reader, writer:
        mapping = {c.id: writer.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest)
                   for c in reader.connections}
        for connection, log_ns, raw in reader.messages():
            writer.write(mapping[connection.id], log_ns, raw)
    summary = encode_bag(packed, tmp_path / "out", encoder)
    assert summary.storage == storage
    assert summary.frames == sum(w.good for w in written) and len(summary.skipped) == 1
    assert read_all(tmp_path / "out")[FRONT] == read_all(plain)[FRONT]


# ------------------------------------------------------------------------------ unusable encoder outputs (NaN)


def write_front_camera_bag(path: Path, frames: int) -> None:
    store = get_typestore(Stores.ROS2_HUMBLE)
    header_class, time_class = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        front = writer.add_connection(FRONT, "sensor_msgs/msg/Image", typestore=store)
        for index in range(frames):
            header = header_class(stamp=time_class(sec=100 + index, nanosec=0), frame_id="front_optical")
            message = _raw(store, header, _photo(index), "rgb8")
            writer.write(front, 1_700_000_000_000_000_000 + index * 100_000_000,
                         store.serialize_cdr(message, "sensor_msgs/msg/Image"))


def nan_encoder(shards: Path, rate: float) -> SiglipEncoder:
    """The real encoder whose last shard returns NaN on a seeded ``rate`` of its calls (backends.faults)."""
    from fault_backends import FaultInjectingBackend

    from rk_siglip_ros.manifest import load_manifest
    from rk_siglip_ros.runtime.backends import create_backend

    backend = FaultInjectingBackend(create_backend("onnxruntime", threads=1), "nan", rate=rate, seed=3)
    return SiglipEncoder(load_manifest(shards), backend, mode="pipeline")


def test_a_frame_with_a_nan_output_is_skipped_and_the_run_goes_on(tmp_path, shards):
    write_front_camera_bag(tmp_path / "in", 24)
    with nan_encoder(shards, rate=0.25) as faulty:
        summary = encode_bag(tmp_path / "in", tmp_path / "out", faulty)
        struck = faulty.backend.injected
    assert 0 < struck < 24 and len(summary.skipped) == struck and summary.frames == 24 - struck
    assert all(frame.reason.startswith("encoder output: ") and "NaN" in frame.reason for frame in summary.skipped)
    store = get_typestore(Stores.ROS2_HUMBLE)
    skipped_log_times = {frame.log_time_ns for frame in summary.skipped}
    written = read_all(tmp_path / "out")
    assert len(written[EMBEDDING_TOPIC]) == summary.frames and len(written[FRONT]) == 24  # every source copied
    assert not skipped_log_times & {log_ns for log_ns, _ in written[EMBEDDING_TOPIC]}
    for _, raw in written[EMBEDDING_TOPIC]:
        assert np.isfinite(embedding_from_message(store.deserialize_cdr(raw, "sensor_msgs/msg/Image"))[0]).all()


def test_unusable_outputs_in_a_row_end_the_run_without_an_output(tmp_path, shards):
    from rk_siglip_ros.bag.replay import MAX_UNUSABLE_OUTPUTS_IN_A_ROW
    from rk_siglip_ros.runtime.encoder import EncoderOutputError

    write_front_camera_bag(tmp_path / "in", MAX_UNUSABLE_OUTPUTS_IN_A_ROW + 5)
    with nan_encoder(shards, rate=1.0) as faulty, pytest.raises(EncoderOutputError, match="frames in a row"):
        encode_bag(tmp_path / "in", tmp_path / "out", faulty)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"]  # no staged .out.partial-* left behind
