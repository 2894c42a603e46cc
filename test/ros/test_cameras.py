"""Three cameras at 30 Hz into the installed node (`ros2 launch`): one embedding per encoded frame with its source
frame's header and the encoder's values; under overload the newest frame wins, cameras are served in turn and
nothing queues up."""

from __future__ import annotations

import array
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import ros_support

ros_support.require_ros()

import cv2  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

RATE_HZ = 30.0
SECONDS = 4.0
WIDTH, HEIGHT = 64, 48
# topic -> how the camera sends its frames
CAMERAS = {"/cam_rgb/image_raw": "rgb8", "/cam_mono/image_raw": "mono8", "/cam_jpeg/image_raw/compressed": "jpeg"}


def scene(camera: int, index: int) -> np.ndarray:
    """A different RGB picture per camera and frame (gradients plus noise), so a mix-up changes the embedding."""
    rng = np.random.default_rng(1000 * camera + index)
    rows = np.linspace(0, 255, HEIGHT, dtype=np.float32)[:, None, None]
    cols = np.linspace(0, 255, WIDTH, dtype=np.float32)[None, :, None]
    base = np.concatenate([np.broadcast_to(rows, (HEIGHT, WIDTH, 1)), np.broadcast_to(cols, (HEIGHT, WIDTH, 1)),
                           np.full((HEIGHT, WIDTH, 1), 40.0 * camera)], axis=2)
    return np.clip(base + rng.normal(0, 30, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)


def camera_message(kind: str, rgb: np.ndarray, stamp_ns: int, frame_id: str) -> tuple[Any, np.ndarray]:
    """The message a driver of that kind publishes, and the RGB picture the node should see in it."""
    if kind == "jpeg":
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        msg = CompressedImage(format="jpeg")
        msg.data = array.array("B", jpeg.tobytes())
        seen = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    else:
        if kind == "mono8":
            pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            seen = np.repeat(pixels[:, :, None], 3, axis=2)
        elif kind == "bgr8":
            pixels, seen = np.ascontiguousarray(rgb[:, :, ::-1]), rgb
        else:
            pixels, seen = rgb, rgb
        msg = Image(height=HEIGHT, width=WIDTH, encoding=kind, is_bigendian=0,
                    step=WIDTH * (1 if pixels.ndim == 2 else 3))
        msg.data = array.array("B", pixels.tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg, seen


def play_cameras(client: ros_support.RosClient, publishers: dict[str, Any], seconds: float,
                 rate_hz: float = RATE_HZ) -> dict[tuple[int, int], tuple[str, Any, np.ndarray]]:
    """Publish every camera at ``rate_hz`` for ``seconds``; stamp -> (topic, message, RGB the node should see)."""
    sent: dict[tuple[int, int], tuple[str, Any, np.ndarray]] = {}
    start = time.monotonic()
    frames = int(seconds * rate_hz)
    for index in range(frames):
        time.sleep(max(0.0, start + index / rate_hz - time.monotonic()))
        for camera, (topic, kind) in enumerate(CAMERAS.items()):
            stamp_ns = 1_700_000_000_000_000_000 + index * 33_000_000 + camera * 1000
            msg, seen = camera_message(kind, scene(camera, index), stamp_ns, f"cam{camera}_optical")
            publishers[topic].publish(msg)
            sent[ros_support.stamp_key(msg.header)] = (topic, msg, seen)
    return sent


def embedding_vector(msg: Image) -> np.ndarray:
    assert (msg.encoding, msg.height, msg.is_bigendian) == ("32FC1", 1, 0)
    return np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)[0]


def last_status(diagnostics: list[tuple[float, DiagnosticArray]]) -> dict[str, str]:
    statuses = [s for _, a in diagnostics for s in a.status if s.name.endswith("siglip encoder")]
    assert statuses, "no siglip encoder status on /diagnostics"
    return {kv.key: kv.value for kv in statuses[-1].values}


def camera_publishers(client: ros_support.RosClient) -> dict[str, Any]:
    return {topic: client.publisher(CompressedImage if kind == "jpeg" else Image, topic, ros_support.camera_qos())
            for topic, kind in CAMERAS.items()}


def test_three_cameras_one_embedding_per_encoded_frame_equal_to_the_encoder(
        installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient) -> None:
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    embeddings = client.collect(Image, ros_support.OUTPUT)
    diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    publishers = camera_publishers(client)
    node = ros_support.launch_node(installed_env, shards=str(tiny_shards), backend="onnxruntime",
                                   image_topics=f"[{', '.join(CAMERAS)}]")
    with ros_support.running(node):
        ros_support.wait_until_connected(client, list(publishers.values()))
        sent = play_cameras(client, publishers, SECONDS)
        # Every frame taken is published within the encoder's latency; wait until the count stops changing.
        ros_support.wait_until(lambda: len(embeddings) > 0 and time.monotonic() - embeddings[-1][0] > 2.0, 30)
        published_total = int(_wait_for_total(diagnostics, len(embeddings)))
        node.interrupt()
        assert node.wait() == 0, node.output

    received = [msg for _, msg in embeddings]
    stamps = [ros_support.stamp_key(msg.header) for msg in received]
    assert len(set(stamps)) == len(stamps), "a frame was encoded twice"
    assert published_total == len(received), "the node published embeddings that did not arrive, or vice versa"
    per_camera = Counter(sent[stamp][0] for stamp in stamps)
    assert set(per_camera) == set(CAMERAS), f"a camera got no embedding: {per_camera}"

    with SiglipEncoder.open(tiny_shards, backend="onnxruntime", mode="sequential") as reference:
        for msg in received:
            topic, source, seen = sent[ros_support.stamp_key(msg.header)]
            assert msg.header.frame_id == source.header.frame_id
            expected = reference.encode(seen)
            got = embedding_vector(msg)
            cosine = float(got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected)))
            assert cosine >= 0.99999, f"{topic}: cos {cosine:.7f} against encode() of the same pixels"


def _wait_for_total(diagnostics: list[tuple[float, DiagnosticArray]], expected: int) -> int:
    """The node's own count of published embeddings, once a diagnostics update has caught up with ``expected``."""
    ros_support.wait_until(lambda: int(last_status(diagnostics).get("total published", -1)) >= expected, 10)
    return int(last_status(diagnostics)["total published"])


def slow_profile(path: Path, per_call_ms: float) -> Path:
    """A sim timing profile where every shard call takes ``per_call_ms``: the encoder is the bottleneck."""
    path.write_text(json.dumps({"name": "slow-test", "per_call_ms": per_call_ms, "dense_ms_per_gmac": 0.0}))
    return path


def test_overload_newest_frame_wins_cameras_take_turns_nothing_queues(
        installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient, tmp_path: Path) -> None:
    embeddings = client.collect(Image, ros_support.OUTPUT)
    publishers = camera_publishers(client)
    params = ros_support.write_params(tmp_path / "params.yaml", timing_profile=str(slow_profile(
        tmp_path / "slow.json", 60.0)))
    node = ros_support.launch_node(installed_env, shards=str(tiny_shards), backend="sim", mode="pipeline",
                                   image_topics=f"[{', '.join(CAMERAS)}]", params_file=str(params))
    with ros_support.running(node):
        ros_support.wait_until_connected(client, list(publishers.values()))
        sent = play_cameras(client, publishers, SECONDS)
        stopped = len(embeddings)
        ros_support.wait_until(lambda: len(embeddings) > 0 and time.monotonic() - embeddings[-1][0] > 2.0, 30)
        node.interrupt()
        assert node.wait() == 0, node.output

    stamps = [ros_support.stamp_key(msg.header) for _, msg in embeddings]
    assert len(set(stamps)) == len(stamps)
    offered = len(sent)
    assert 0 < len(stamps) < offered / 2, f"{len(stamps)} embeddings of {offered} frames: no overload"
    # Nothing queues: once the cameras stop, only the frames in the encoder (capacity 3) and the one newest frame
    # per camera waiting in its mailbox can still come out.
    after_stop = stamps[stopped:]
    assert len(after_stop) <= 3 + len(CAMERAS), f"{len(after_stop)} embeddings after the cameras stopped"
    # Newest frame wins: whatever waited in a mailbox when the cameras stopped was its camera's last frame, and it
    # is encoded rather than an older one.
    last_frame = {topic: max(s for s, (t, _, _) in sent.items() if t == topic) for topic in CAMERAS}
    assert set(last_frame.values()) <= set(stamps), f"a camera's newest frame was not encoded: {after_stop}"
    # Cameras take turns: equal rates in, (nearly) equal shares out.
    per_camera = Counter(sent[s][0] for s in stamps)
    assert set(per_camera) == set(CAMERAS)
    assert max(per_camera.values()) - min(per_camera.values()) <= 2, f"unfair: {per_camera}"
