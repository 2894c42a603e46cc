"""`managed:=true` under real ROS 2: a lifecycle node driven through the lifecycle_msgs services and `ros2 lifecycle`.

One node goes through the whole life: configure fails (no shard set: one line, still unconfigured), configure
succeeds once the shard set is there (inactive: publishers, no camera subscription), activate (frames in,
embeddings out), deactivate (no subscription, nothing published), activate again (the same frames give the same
embeddings), cleanup (the encoder's threads are gone, no publishers), configure again, shutdown (the process exits 0).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import ros_support

ros_support.require_ros()

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_cameras import camera_message, scene  # noqa: E402

from rk_siglip_ros.messages.embedding_msg import embedding_from_message  # noqa: E402

CAMERA = "/cam_lifecycle/image_raw"
NODE = "/encoder_node"
FRAMES = 3
SERVICE_TIMEOUT_S = 60.0
# How long an inactive node is given to (wrongly) publish a frame sent to it: a liveness bound, not a timing claim.
QUIET_S = 1.5


class Lifecycle:
    """The node's lifecycle_msgs services, called from the test's rclpy client."""

    def __init__(self, client: ros_support.RosClient, node: str) -> None:
        self._client = client
        self._change = client.node.create_client(ChangeState, f"{node}/change_state")
        self._get = client.node.create_client(GetState, f"{node}/get_state")

    def _call(self, service: Any, request: Any) -> Any:
        assert service.wait_for_service(timeout_sec=SERVICE_TIMEOUT_S), f"{service.srv_name} never came up"
        future = service.call_async(request)
        assert ros_support.wait_until(future.done, SERVICE_TIMEOUT_S), f"{service.srv_name} did not answer"
        return future.result()

    def state(self) -> str:
        return self._call(self._get, GetState.Request()).current_state.label

    def change(self, transition: int) -> bool:
        return self._call(self._change, ChangeState.Request(transition=Transition(id=transition))).success


def ros2_lifecycle(env: dict[str, str], verb: str, *arguments: str) -> subprocess.CompletedProcess:
    """`ros2 lifecycle VERB ...` without the daemon (it would outlive the test), spinning 3 s to discover the node
    first: the CLI's 0.5 s default was too short for Fast DDS on a loaded machine ("Node not found")."""
    return subprocess.run(["ros2", "lifecycle", verb, "--no-daemon", "--spin-time", "3", *arguments], env=env,
                          capture_output=True, text=True, timeout=120)


def node_pid(launch: ros_support.RosProcess) -> int:
    """The node's process id, from ros2 launch's "process started with pid [N]" line."""
    assert launch.wait_for_line("process started with pid"), launch.output
    return int(re.search(r"encoder_node-\d+\]: process started with pid \[(\d+)\]", launch.output).group(1))


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_lifecycle_sequence(installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient,
                            tmp_path: Path) -> None:
    shards = tmp_path / "shards"  # not there yet: the first configure fails
    params = ros_support.write_params(tmp_path / "params.yaml", shards=str(shards), backend="onnxruntime",
                                      image_topics=[CAMERA], qos="reliable")
    embeddings = client.collect(Image, ros_support.OUTPUT)
    camera = client.publisher(Image, CAMERA)
    frames = [camera_message("rgb8", scene(2, index), 1_700_000_000_000_000_000 + index * 33_000_000,
                             "cam_lifecycle_optical")[0] for index in range(FRAMES)]
    lifecycle = Lifecycle(client, NODE)
    launch = ros_support.launch_node(installed_env, params_file=str(params), managed="true")
    with ros_support.running(launch):
        pid = node_pid(launch)
        assert launch.wait_for_line("unconfigured: waiting for a lifecycle manager"), launch.output
        got = ros2_lifecycle(installed_env, "get", NODE)
        assert got.stdout.strip() == "unconfigured [1]", got.stdout + got.stderr
        unconfigured_threads = threads(pid)

        # configure without a shard set: refused, the reason in one line, still unconfigured, nothing opened
        refused = ros2_lifecycle(installed_env, "set", NODE, "configure")
        assert "Transitioning failed" in refused.stderr, refused.stdout + refused.stderr
        assert launch.wait_for_line(f"configure failed, still unconfigured: shards folder {shards} does not exist")
        assert "Traceback" not in launch.output, launch.output
        assert lifecycle.state() == "unconfigured"
        assert client.node.count_publishers(ros_support.OUTPUT) == 0

        shutil.copytree(tiny_shards, shards)
        assert lifecycle.change(Transition.TRANSITION_CONFIGURE), launch.output
        assert lifecycle.state() == "inactive"
        assert client.node.count_publishers(ros_support.OUTPUT) == 1
        assert camera.get_subscription_count() == 0  # inactive: not taking frames
        assert threads(pid) > unconfigured_threads  # the encoder's workers: what cleanup must release

        first = encode_while_active(client, lifecycle, camera, frames, embeddings, launch)

        assert lifecycle.change(Transition.TRANSITION_DEACTIVATE)
        assert lifecycle.state() == "inactive"
        assert ros_support.wait_until(lambda: camera.get_subscription_count() == 0)
        before = len(embeddings)
        for message in frames:
            camera.publish(message)
        time.sleep(QUIET_S)
        assert len(embeddings) == before, "an inactive node published"

        second = encode_while_active(client, lifecycle, camera, frames, embeddings, launch)
        for stamp, vector in first.items():
            np.testing.assert_allclose(second[stamp], vector, rtol=0, atol=1e-6)

        assert lifecycle.change(Transition.TRANSITION_DEACTIVATE)
        cleaned = ros2_lifecycle(installed_env, "set", NODE, "cleanup")
        assert "Transitioning successful" in cleaned.stdout, cleaned.stdout + cleaned.stderr
        assert lifecycle.state() == "unconfigured"
        assert launch.wait_for_line("unconfigured: NPU contexts and encoder released"), launch.output
        # The encoder's worker threads and ONNX Runtime's thread pools are gone with it.
        assert ros_support.wait_until(lambda: threads(pid) <= unconfigured_threads), \
            (threads(pid), unconfigured_threads)
        assert ros_support.wait_until(lambda: client.node.count_publishers(ros_support.OUTPUT) == 0)

        assert lifecycle.change(Transition.TRANSITION_CONFIGURE), launch.output  # opens again after a cleanup
        shut = ros2_lifecycle(installed_env, "set", NODE, "shutdown")
        assert "Transitioning successful" in shut.stdout, shut.stdout + shut.stderr
        assert launch.wait() == 0, launch.output
    assert "Traceback" not in launch.output, launch.output


def encode_while_active(client: ros_support.RosClient, lifecycle: Lifecycle, camera: Any, frames: list[Any],
                        embeddings: list[tuple[float, Any]], launch: ros_support.RosProcess) -> dict[Any, np.ndarray]:
    """Activate, send ``frames`` one at a time, return their embeddings by stamp; the node stays active."""
    assert lifecycle.change(Transition.TRANSITION_ACTIVATE), launch.output
    assert lifecycle.state() == "active"
    probe, _ = camera_message("rgb8", scene(3, 99), 1_600_000_000_000_000_000, "probe")
    client.answered_probes.discard(CAMERA)
    assert ros_support.probe_until_answered({CAMERA: (camera, ros_support.as_probe(probe, CAMERA))},
                                            client.answered_probes, ros_support.wait_until), launch.output
    start = len(embeddings)
    for sent, message in enumerate(frames, start=1):
        camera.publish(message)  # one at a time: the newest-frame mailbox replaces nothing
        assert ros_support.wait_until(lambda count=start + sent: len(embeddings) >= count), launch.output
    return {ros_support.stamp_key(message.header): embedding_from_message(message)[0]
            for _, message in embeddings[start:]}

