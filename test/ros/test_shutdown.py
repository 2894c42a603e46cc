"""Ctrl-C while frames are in flight, under this ROS (Humble shuts the rclpy context down in its own SIGINT handler):
the node finishes and publishes the frames already in the encoder, drops the waiting ones, exits 0, no traceback —
what docs/node.md's Shutdown section says."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import ros_support

ros_support.require_ros()

from sensor_msgs.msg import Image  # noqa: E402
from test_cameras import CAMERAS, camera_message, scene, slow_profile  # noqa: E402

RAW_CAMERAS = [topic for topic, kind in CAMERAS.items() if kind != "jpeg"]
STOP_LINE = re.compile(r"stopped: published (\d+) embeddings, (\d+) of them finished after the stop request; "
                       r"dropped (\d+) frames? \(waiting in a mailbox")


def test_sigint_publishes_the_frames_in_flight_and_exits_0(
        installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient, tmp_path: Path) -> None:
    embeddings = client.collect(Image, ros_support.OUTPUT)
    publishers = [client.publisher(Image, topic, ros_support.camera_qos()) for topic in RAW_CAMERAS]
    # 200 ms per shard, three shards one per core: a frame is in the encoder for 600 ms, three at a time.
    params = ros_support.write_params(tmp_path / "slow.yaml",
                                      timing_profile=str(slow_profile(tmp_path / "slow.json", 200.0)))
    node = ros_support.launch_node(installed_env, shards=str(tiny_shards), backend="sim", params_file=str(params),
                                   image_topics=f"[{', '.join(RAW_CAMERAS)}]")
    stop_cameras = threading.Event()

    def cameras() -> None:
        index = 0
        while not stop_cameras.wait(1 / 30):
            for camera, publisher in enumerate(publishers):
                msg, _ = camera_message("rgb8", scene(camera, index % 5), 10**18 + index * 33_000_000 + camera,
                                        f"cam{camera}")
                publisher.publish(msg)
            index += 1

    feeder = threading.Thread(target=cameras, daemon=True)
    with ros_support.running(node):
        ros_support.wait_until_connected(client, publishers)
        feeder.start()
        try:
            assert ros_support.wait_until(lambda: len(embeddings) >= 4), "the encoder never got going"
            interrupted = time.monotonic()
            node.interrupt()  # cameras keep sending: frames wait in the mailboxes and fill the encoder
            code = node.wait()
        finally:
            stop_cameras.set()
            feeder.join()
        time.sleep(0.5)  # the last embeddings are already on the wire when the node exits; let them land

    assert code == 0, node.output
    assert "Traceback" not in node.output, node.output
    match = STOP_LINE.search(node.output)
    assert match, f"no shutdown summary in the node's log:\n{node.output}"
    published, drained, dropped = (int(group) for group in match.groups())
    assert drained >= 1, "nothing was in flight at Ctrl-C: the test did not test the drain"
    assert dropped >= 1, "no frame was waiting at Ctrl-C"
    assert len(embeddings) == published, "an embedding the node published did not arrive"
    assert sum(1 for received_at, _ in embeddings if received_at >= interrupted) >= drained
    assert "process has finished cleanly" in node.output  # ros2 launch saw exit code 0


def test_sigint_during_start_up_still_exits_0(installed_env: dict[str, str], tiny_shards: Path) -> None:
    """Ctrl-C while the node is still starting (its DDS participant exists, the encoder is loading): it finishes
    starting, then stops cleanly. A KeyboardInterrupt half-way through start-up used to leave encoder threads
    running and the process hanging."""
    process = ros_support.run_node(installed_env, "-p", f"shards:={tiny_shards}", "-p", "backend:=onnxruntime")
    with ros_support.running(process):
        # Cyclone's note on the loopback comes as the node's DDS participant is created, before the encoder loads.
        process.wait_for_line("is not multicast-capable", timeout=10)
        process.interrupt()
        assert process.wait() == 0, process.output
    assert "Traceback" not in process.output
    assert STOP_LINE.search(process.output), process.output
