"""DDS under a real ROS 2: the shipped config for large images and the node's explanations when a camera topic has
publishers but no frames arrive (installed launch file, DDS on the loopback), on whichever middleware the session runs
(`make test-ros` runs this under Cyclone DDS and Fast DDS); Cyclone's own configuration checks skip elsewhere."""

from __future__ import annotations

import array
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

# test/ros's shared support (colcon-built install, launch helpers, rclpy client) and its conftest come with the
# real-ROS suite; on a tree without it this module skips instead of failing collection.
ros_support = pytest.importorskip("ros_support", reason="the real-ROS suite's test/ros/ros_support.py is not here")
ros_support.require_ros()

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from rk_siglip_ros.node.dds import (  # noqa: E402
    FASTDDS_PROFILES_FILE,
    LARGE_IMAGES_FILE,
    REQUESTED_RECEIVE_BUFFER,
    kernel_receive_buffer_limit,
)

TOPIC = "/qos_cam/image_raw"
SHIPPED = ros_support.REPO / "config" / LARGE_IMAGES_FILE
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Starts an rclpy node and says so; what Cyclone was granted goes to the trace file named in CYCLONEDDS_URI.
START_NODE = "import rclpy; rclpy.init(); rclpy.create_node('dds_start_check'); print('started', flush=True)"


def frame() -> Image:
    msg = Image(height=8, width=8, encoding="rgb8", is_bigendian=0, step=24)
    msg.data = array.array("B", bytes(range(192)))
    msg.header.frame_id = "qos_cam"
    return msg


def statuses(diagnostics: list[tuple[float, DiagnosticArray]]) -> list[DiagnosticStatus]:
    return [s for _, a in diagnostics for s in a.status if s.name.endswith("siglip encoder")]


def launch_with_qos(installed_env: dict[str, str], tiny_shards: Path, tmp_path: Path, qos: str) -> Any:
    params = ros_support.write_params(tmp_path / "params.yaml", qos=qos)
    return ros_support.launch_node(installed_env, shards=str(tiny_shards), backend="onnxruntime",
                                   image_topics=f"[{TOPIC}]", params_file=str(params))


def test_best_effort_camera_and_reliable_node_warn_naming_topic_and_qos(
        installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient, tmp_path: Path) -> None:
    diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    embeddings = client.collect(Image, ros_support.OUTPUT)
    camera = client.publisher(Image, TOPIC, qos_profile_sensor_data)  # best effort, as camera drivers publish
    node = launch_with_qos(installed_env, tiny_shards, tmp_path, "reliable")
    with ros_support.running(node):
        # The node is up once it publishes; DDS never matches the two, so the camera sees no subscriber.
        assert ros_support.wait_until(lambda: client.node.count_publishers(ros_support.OUTPUT) > 0)
        assert ros_support.wait_until(lambda: client.node.count_subscribers(TOPIC) > 0)

        def warned() -> bool:
            camera.publish(frame())
            return any(s.level == DiagnosticStatus.WARN and TOPIC in s.message and "QoS incompatible" in s.message
                       for s in statuses(diagnostics))

        assert ros_support.wait_until(warned, timeout=30, step=0.2), [s.message for s in statuses(diagnostics)]
        # After 3 s without a frame the cause is logged as well (the diagnostics said it from the first report).
        assert node.wait_for_line(f"no frames on {TOPIC} for", timeout=30), node.output
        node.interrupt()
        assert node.wait() == 0, node.output
    warning = next(s.message for s in statuses(diagnostics) if "QoS incompatible" in s.message)
    assert "policy RELIABILITY" in warning and "qos" in warning, warning
    assert embeddings == []
    # The log says it too, with the topic: from the incompatible-QoS event at once, and as the no-frames cause.
    assert f"{TOPIC}: a publisher offers QoS incompatible with this node's subscription (qos: reliable; policy " \
           f"RELIABILITY)" in node.output, node.output


def test_reliable_camera_and_best_effort_node_match_without_a_warning(
        installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient, tmp_path: Path) -> None:
    """The reverse pairing is compatible (a best-effort reader takes from a reliable writer): frames flow, and the
    QoS warning of the test above is not something the node says about every camera."""
    diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    embeddings = client.collect(Image, ros_support.OUTPUT)
    camera = client.publisher(Image, TOPIC, RELIABLE)
    node = launch_with_qos(installed_env, tiny_shards, tmp_path, "sensor_data")
    with ros_support.running(node):
        ros_support.wait_until_connected(client, [camera])

        def encoded() -> bool:
            camera.publish(frame())
            return len(embeddings) >= 3

        assert ros_support.wait_until(encoded, timeout=30, step=0.2)
        assert ros_support.wait_until(lambda: any(kv.key == f"{TOPIC}: publishers" and kv.value == "1"
                                                  for s in statuses(diagnostics) for kv in s.values))
        node.interrupt()
        assert node.wait() == 0, node.output
    assert not any("QoS incompatible" in s.message for s in statuses(diagnostics))
    assert "QoS incompatible" not in node.output


def node_process(launch: ros_support.RosProcess) -> psutil.Process:
    """The encoder_node process that `ros2 launch` started."""
    def find() -> psutil.Process | None:
        for child in psutil.Process(launch.process.pid).children(recursive=True):
            try:
                if any("encoder_node" in part for part in child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    assert ros_support.wait_until(lambda: find() is not None), launch.output
    return find()


def test_launch_gives_the_node_the_large_images_config_and_dds_config_none_does_not(
        installed_env: dict[str, str], tiny_shards: Path, tmp_path: Path) -> None:
    """Cyclone: large_images puts the shipped file in the node's CYCLONEDDS_URI. Fast DDS: nothing (its profile acts
    in the cameras' processes, not the node's). A Fast DDS XML of the user's own reaches the node through
    dds_config:=<path>; none changes nothing."""
    env = {key: value for key, value in installed_env.items() if key not in ("CYCLONEDDS_URI", FASTDDS_PROFILES_FILE)}
    installed = Path(env["AMENT_PREFIX_PATH"].split(os.pathsep)[0]) / "share" / "rk_siglip_ros" / "config"
    own_fastdds = tmp_path / "own_fastdds.xml"
    own_fastdds.write_text('<?xml version="1.0"?><profiles xmlns="http://www.eprosima.com/XMLSchemas/'
                           'fastRTPS_Profiles"/>\n')
    seen = {}
    for choice in ("large_images", "none", str(own_fastdds)):
        launch = ros_support.launch_node(env, shards=str(tiny_shards), backend="onnxruntime",
                                         image_topics=f"[{TOPIC}]", dds_config=choice)
        with ros_support.running(launch):
            assert launch.wait_for_line("encoding"), launch.output
            node_env = node_process(launch).environ()
            seen[choice] = (node_env.get("CYCLONEDDS_URI"), node_env.get(FASTDDS_PROFILES_FILE))
            launch.interrupt()
            assert launch.wait() == 0, launch.output
    if ros_support.on_cyclonedds():
        assert seen["large_images"] == ((installed / LARGE_IMAGES_FILE).resolve().as_uri(), None)
    else:
        assert seen["large_images"] == (None, None)
    assert seen["none"] == (None, None)
    assert seen[str(own_fastdds)] == (None, str(own_fastdds.resolve()))
    # launch itself (the parent) keeps its environment: only the node's process is changed.
    assert "CYCLONEDDS_URI" not in env and FASTDDS_PROFILES_FILE not in env


def test_a_missing_dds_config_file_is_one_line(installed_env: dict[str, str], tiny_shards: Path,
                                              tmp_path: Path) -> None:
    missing = tmp_path / "nope.xml"
    launch = ros_support.launch_node(installed_env, shards=str(tiny_shards), dds_config=str(missing))
    with ros_support.running(launch):
        code = launch.wait()
    assert code != 0
    assert f"dds_config:={missing}: {missing} is not a file; pass large_images or none" in launch.output
    assert "Traceback" not in launch.output


def start_with(config_uri: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    """An rclpy node started with ``CYCLONEDDS_URI=config_uri`` plus a Cyclone trace of its configuration."""
    trace = tmp_path / f"cyclone-{len(list(tmp_path.glob('cyclone-*')))}.log"
    tracing = (f"<CycloneDDS><Domain id=\"any\"><Tracing><Verbosity>config</Verbosity>"
               f"<OutputFile>{trace}</OutputFile></Tracing></Domain></CycloneDDS>")
    env = dict(os.environ, CYCLONEDDS_URI=f"{config_uri},{tracing}")
    done = subprocess.run([sys.executable, "-c", START_NODE], env=env, capture_output=True, text=True, timeout=60)
    return done, trace.read_text() if trace.exists() else ""


def test_shipped_config_starts_where_the_kernel_grants_less_than_it_asks(tmp_path: Path) -> None:
    if not ros_support.on_cyclonedds():
        pytest.skip(f"Cyclone DDS's own configuration; this session runs {ros_support.rmw_implementation()}")
    limit = kernel_receive_buffer_limit()
    if limit is None or limit * 2 >= REQUESTED_RECEIVE_BUFFER:  # Linux grants twice the limit for bookkeeping
        pytest.skip(f"net.core.rmem_max is {limit}: this kernel grants the 64 MB, nothing to show")
    done, trace = start_with(SHIPPED.as_uri(), tmp_path)
    assert done.returncode == 0 and "started" in done.stdout, done.stderr
    assert f"failed to increase socket receive buffer size to {REQUESTED_RECEIVE_BUFFER} bytes, continuing with" \
           in trace, trace[-2000:]
    # The control: the same request with a minimum (min="64MB") is what would stop a node from starting here.
    strict = tmp_path / "strict.xml"
    strict.write_text(SHIPPED.read_text().replace('min="default"', 'min="64MB"'))
    refused, _ = start_with(strict.as_uri(), tmp_path)
    assert refused.returncode != 0 and "started" not in refused.stdout


def test_raw_1080p_frames_from_three_cameras_reach_the_node(installed_env: dict[str, str], tiny_shards: Path,
                                                           client: ros_support.RosClient) -> None:
    """Large images through the installed launch file's defaults (dds_config:=large_images, qos: auto, raw
    subscriptions): every camera's 6.2 MB frames arrive and are encoded, with their headers. Cameras publish as the
    README says for the middleware: best effort on Cyclone DDS; reliable on Fast DDS, which delivers large frames
    whole only to a reliable subscription (best effort: about 5 % of 1080p frames, benchmarks/RESULTS.md)."""
    topics = [f"/big{index}/image_raw" for index in range(3)]
    embeddings = client.collect(Image, ros_support.OUTPUT)
    cameras = [client.publisher(Image, topic, ros_support.camera_qos()) for topic in topics]
    frames = []
    for index in range(3):
        msg = Image(height=1080, width=1920, encoding="rgb8", is_bigendian=0, step=1920 * 3)
        msg.data = array.array("B", bytes([40 * index]) * (1080 * 1920 * 3))
        msg.header.frame_id = f"big{index}"
        frames.append(msg)
    node = ros_support.launch_node(installed_env, shards=str(tiny_shards), backend="onnxruntime",
                                   image_topics=f"[{', '.join(topics)}]")
    with ros_support.running(node):
        ros_support.wait_until_connected(client, cameras)

        def every_camera_encoded() -> bool:
            for camera, msg in zip(cameras, frames, strict=True):
                camera.publish(msg)
            return {m.header.frame_id for _, m in embeddings} == {"big0", "big1", "big2"}

        assert ros_support.wait_until(every_camera_encoded, timeout=60, step=0.1), node.output
        node.interrupt()
        assert node.wait() == 0, node.output


def test_fastdds_node_subscribes_reliable_by_default(installed_env: dict[str, str], tiny_shards: Path,
                                                     client: ros_support.RosClient) -> None:
    """qos: auto (the default) on Fast DDS is a reliable subscription: a best-effort camera then does not match (the
    node says so: QoS incompatible), a reliable one does. On other middlewares auto is sensor_data (best effort),
    which matches both."""
    from rclpy.qos import ReliabilityPolicy

    node = ros_support.launch_node(installed_env, shards=str(tiny_shards), backend="onnxruntime",
                                   image_topics=f"[{TOPIC}]")
    with ros_support.running(node):
        assert ros_support.wait_until(lambda: client.node.count_subscribers(TOPIC) > 0), node.output
        infos = client.node.get_subscriptions_info_by_topic(TOPIC)
        node.interrupt()
        assert node.wait() == 0, node.output
    expected = ReliabilityPolicy.RELIABLE if ros_support.on_fastdds() else ReliabilityPolicy.BEST_EFFORT
    assert [info.qos_profile.reliability for info in infos] == [expected]
