"""What the real-ROS tests share: finding ROS, a DDS domain of their own, a colcon-built install of this package,
the installed launch file run as a subprocess, and an rclpy client that publishes camera frames and collects
embeddings and diagnostics.

Only this folder's tests import rclpy; the off-ROS suite (test/*.py) never does. `make test-ros` runs this folder
with a ROS 2 sourced (see the Makefile); without one every module here skips with :data:`NO_ROS_REASON`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import ros_workspace  # noqa: E402 -- tools/ros_workspace.py: domain claims and the colcon build, shared with tools

# The shared folder beside the clone (ROS tree, test data); `make SHARED=...` points elsewhere.
SHARED = Path(os.environ.get("RK_SIGLIP_SHARED", REPO.parent / "shared"))
PACKAGE = ros_workspace.PACKAGE
LAUNCH_FILE = "encoder.launch.py"
OUTPUT = "/siglip/embeddings"
# Liveness bounds only (how long to wait before calling something lost), never timing assertions.
START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
# A publisher counts the node's subscription as soon as the publisher's side has discovered it; the node's side may
# discover the publisher a moment later, and a frame sent in between is dropped without a trace (volatile durability:
# a late match gets nothing sent before it, reliable or not). Tests that count frames one by one first send probe
# frames until every camera's probe comes back (`wait_until_receiving`). This frame_id prefix marks a probe; the
# node keeps the source frame_id, and `RosClient.collect` leaves the probes' answers out of what tests see.
PROBE_FRAME_ID = "rk_siglip_test_probe:"


def _no_ros_reason() -> str | None:
    reason = os.environ.get("RK_SIGLIP_NO_ROS")
    if reason:
        return reason
    try:
        import launch  # noqa: F401
        import rclpy  # noqa: F401
        from sensor_msgs.msg import Image  # noqa: F401
    except ImportError as error:
        return f"no ROS 2 in this environment ({error}): run `make test-ros`, or source /opt/ros/<distro>/setup.bash"
    return None


NO_ROS_REASON = _no_ros_reason()


def require_ros() -> None:
    """Skip the calling test module (module level) with the reason when no ROS 2 is sourced."""
    if NO_ROS_REASON is not None:
        pytest.skip(NO_ROS_REASON, allow_module_level=True)


# ------------------------------------------------------------------------------------------- DDS isolation


_domain_lock: TextIO | None = None


def claim_domain_id() -> int:
    """A ROS_DOMAIN_ID no other run on this machine holds (ros_workspace.claim_domain_id), held for the life of
    this process."""
    global _domain_lock
    domain, _domain_lock = ros_workspace.claim_domain_id()
    return domain


localhost_only = ros_workspace.localhost_only


def isolate_dds() -> int:
    """DDS on the loopback in a domain of this session's own; every subprocess inherits it. The middleware is the
    one the environment chose (`make test-ros` sets RMW_IMPLEMENTATION per combination, or leaves it unset for the
    distro's default): see :func:`rmw_implementation`."""
    domain = claim_domain_id()
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    ros_workspace.keep_dds_on_loopback(os.environ)
    # The nodes' log files go with the session's folder at exit (their output is captured and shown on failure).
    os.environ.setdefault("ROS_LOG_DIR", str(Path(_session_dir()) / "ros_log"))
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.environ["RCUTILS_COLORIZED_OUTPUT"] = "0"
    return domain


@functools.lru_cache(maxsize=1)
def rmw_implementation() -> str:
    """The middleware this session's processes run on: what rclpy loads (RMW_IMPLEMENTATION, or the distro's
    default when it is unset)."""
    import rclpy

    return rclpy.get_rmw_implementation_identifier()


def camera_qos() -> Any:
    """The QoS the tests' cameras publish with, as the README tells a robot on this middleware: best effort
    (qos_profile_sensor_data, what camera drivers commonly publish) on Cyclone DDS; reliable on Fast DDS, where the
    node subscribes reliable by default (node/dds.py node_qos) and a best-effort camera would not match."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if on_fastdds():
        return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    return qos_profile_sensor_data


def on_fastdds() -> bool:
    return "fastrtps" in rmw_implementation()


def on_cyclonedds() -> bool:
    return "cyclonedds" in rmw_implementation()


# ------------------------------------------------------------------------------------------- the install


_installed: dict[str, str] | None = None
_tiny_shards: Path | None = None


def tiny_shards() -> Path:
    """A random:tiny shard set (three ONNX shards, pipeline3), built once per process into a temporary folder."""
    global _tiny_shards
    if _tiny_shards is None:
        _tiny_shards = build_shard_set(Path(_session_dir()) / "shards-random-tiny")
    return _tiny_shards


def builder_python() -> str:
    """A Python that can build shard sets: this one when it has the builder (torch), else RK_SIGLIP_BUILDER_PYTHON
    (the module skips when neither is there)."""
    try:
        import torch  # noqa: F401
    except ImportError as error:
        builder = os.environ.get("RK_SIGLIP_BUILDER_PYTHON")
        if not builder:
            pytest.skip(f"no shard builder here ({error}) and RK_SIGLIP_BUILDER_PYTHON is not set")
        return builder
    return sys.executable


def build_shard_set(out: Path, text: bool = False, profile: str = "pipeline3") -> Path:
    """random:tiny (``profile``, ONNX; with its text tower if ``text``) into ``out``. In this Python when it has the
    builder (torch); else with RK_SIGLIP_BUILDER_PYTHON, the Python of an environment that has it (`make test-ros`
    points the Jazzy venv, CPython 3.12 without torch, at the 3.11 venv's): shard sets are Python-independent."""
    builder = builder_python()
    if builder != sys.executable:
        script = ("import sys; from pathlib import Path; from rk_siglip_ros.builder.build import build_shards; "
                  "build_shards('random:tiny', Path(sys.argv[1]), profile=sys.argv[3], formats=('onnx',), "
                  "text=sys.argv[2] == '1', progress=False)")
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
        done = subprocess.run([builder, "-c", script, str(out), "1" if text else "0", profile], capture_output=True,
                              text=True, timeout=600, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{builder} could not build random:tiny shards:\n{done.stdout}{done.stderr}")
        return out
    from rk_siglip_ros.builder.build import build_shards

    build_shards("random:tiny", out, profile=profile, formats=("onnx",), text=text, progress=False)
    return out


@functools.lru_cache(maxsize=1)
def _session_dir() -> str:
    """One temporary folder per process for the workspace and shards, removed at exit."""
    path = tempfile.mkdtemp(prefix="rk_siglip_ros_test_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def installed_env() -> dict[str, str]:
    """:func:`colcon_install` into a temporary workspace, once per process (pytest fixtures and launch_testing's
    generate_test_description share it)."""
    global _installed
    if _installed is None:
        workspace = Path(_session_dir()) / "ws"
        _installed = ros_workspace.colcon_install(workspace)
        # launch_ros writes each launch's parameter overrides to a temporary file it never removes: keep those
        # in the session's folder, not in /tmp.
        scratch = Path(_session_dir()) / "tmp"
        scratch.mkdir(exist_ok=True)
        _installed["TMPDIR"] = str(scratch)
    return dict(_installed)


# ------------------------------------------------------------------------------------------- processes


class RosProcess:
    """A `ros2 launch` / `ros2 run` subprocess with its output collected in the background."""

    def __init__(self, command: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.command = list(command)
        self.process = subprocess.Popen(self.command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self._lines)

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT_S) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in line for line in self._lines):
                return True
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                return any(text in line for line in self._lines)
            time.sleep(0.05)
        return False

    def interrupt(self) -> None:
        """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group, so the node gets it from
        the terminal and, under ros2 launch, a second time from launch, which forwards it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)

    def wait(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.command[:3]} did not exit within {timeout} s:\n{self.output}") from None
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """Last resort for a test that failed half-way: the whole process group (launch and its node)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


# How long a daemon-less `ros2` CLI call spins to discover the node before acting: the CLI's 0.5 s default was too
# short for Fast DDS's discovery on a loaded machine ("Node not found").
CLI_DISCOVERY_SPIN_S = "3"


# A fresh CLI process answers "Node not found" when discovery has not finished within its spin: on a loaded machine
# Fast DDS can take longer than CLI_DISCOVERY_SPIN_S. Asked again, as a person would, this many times at most.
CLI_ATTEMPTS = 4


def ros2_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The `ros2` CLI without its daemon (a daemon would outlive the test and serve other sessions), given
    CLI_DISCOVERY_SPIN_S to find the node, and asked again while it has not found it (CLI_ATTEMPTS)."""
    for _ in range(CLI_ATTEMPTS):
        result = subprocess.run(["ros2", *args, "--no-daemon", "--spin-time", CLI_DISCOVERY_SPIN_S], env=env,
                                capture_output=True, text=True, timeout=timeout)
        if "Node not found" not in result.stdout + result.stderr:
            break
    return result


def launch_node(env: dict[str, str], **arguments: str) -> RosProcess:
    """`ros2 launch rk_siglip_ros encoder.launch.py name:=value ...`, the installed launch file."""
    command = ["ros2", "launch", PACKAGE, LAUNCH_FILE, *(f"{name}:={value}" for name, value in arguments.items())]
    return RosProcess(command, env)


def run_node(env: dict[str, str], *ros_args: str) -> RosProcess:
    """`ros2 run rk_siglip_ros encoder_node --ros-args ...`: the node's own exit status, no launch in between."""
    return RosProcess(["ros2", "run", PACKAGE, "encoder_node", "--ros-args", *ros_args], env)


def write_params(path: Path, **values: Any) -> Path:
    """A params file as users write them (`/**: ros__parameters:`), values in YAML flow style."""
    import yaml

    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}, default_flow_style=False))
    return path


# ------------------------------------------------------------------------------------------- rclpy client


class RosClient:
    """An rclpy node spinning in a background thread: publishers for cameras, collectors for topics."""

    def __init__(self, name: str = "rk_siglip_test_client") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.answered_probes: set[str] = set()  # topics whose probe frame came back (see PROBE_FRAME_ID)
        self._watching_probes = False
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException):
            while self._running.is_set() and self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)

    def collect(self, message_type: type, topic: str, qos: Any = 10) -> list[tuple[float, Any]]:
        """Every message on ``topic`` as (receive time.monotonic(), message), appended as they arrive; answers to
        probe frames are noted in :attr:`answered_probes` instead."""
        received: list[tuple[float, Any]] = []

        def store(message: Any) -> None:
            with self._lock:
                if (topic := probed_topic(message)) is not None:
                    self.answered_probes.add(topic)
                else:
                    received.append((time.monotonic(), message))

        self.node.create_subscription(message_type, topic, store, qos)
        return received

    def watch_probes(self) -> None:
        """Note probe answers on the embeddings topic even if the test collects nothing there."""
        if not self._watching_probes:
            from sensor_msgs.msg import Image

            self.collect(Image, OUTPUT)
            self._watching_probes = True

    def publisher(self, message_type: type, topic: str, qos: Any = 10) -> Any:
        return self.node.create_publisher(message_type, topic, qos)

    def close(self) -> None:
        self._running.clear()  # the spin thread stops before the context goes away under it
        self._thread.join(timeout=5)
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        self.context.try_shutdown()


def wait_until(condition: Callable[[], bool], timeout: float = START_TIMEOUT_S, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()


def wait_until_connected(client: RosClient, publishers: Sequence[Any], timeout: float = START_TIMEOUT_S) -> None:
    """Until the node subscribes to every camera and publishes embeddings (the node is up)."""
    assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in publishers)
                      and client.node.count_publishers(OUTPUT) > 0, timeout), "encoder_node did not come up"


def as_probe(message: Any, topic: str) -> Any:
    """``message`` (a camera frame of ``topic``) marked as that camera's probe frame."""
    message.header.frame_id = PROBE_FRAME_ID + topic
    return message


def probed_topic(message: Any) -> str | None:
    """The camera topic ``message`` answers a probe of (its header's frame_id), None for any other message."""
    header = getattr(message, "header", None)
    if header is None or not header.frame_id.startswith(PROBE_FRAME_ID):
        return None
    return header.frame_id[len(PROBE_FRAME_ID):]


def probe_until_answered(probes: Mapping[str, tuple[Any, Any]], answered: set[str],
                         wait: Callable[[Callable[[], bool]], bool]) -> bool:
    """Publish each camera's probe frame, again and again, until its topic is in ``answered``.

    ``probes``: camera topic -> (publisher, probe message); ``wait(condition)``: poll ``condition`` until it holds or
    a deadline passes (the caller's way of spinning), returning whether it held."""
    def all_answered() -> bool:
        waiting = [topic for topic in probes if topic not in answered]
        for topic in waiting:
            publisher, message = probes[topic]
            publisher.publish(message)
        return not waiting

    return wait(all_answered)


def wait_until_receiving(client: RosClient, probes: Mapping[str, tuple[Any, Any]]) -> None:
    """Until the node has encoded a probe frame from every camera in ``probes``: from then on every frame sent
    reaches it (see PROBE_FRAME_ID)."""
    client.watch_probes()
    assert probe_until_answered(probes, client.answered_probes,
                                lambda condition: wait_until(condition, START_TIMEOUT_S, step=0.2)), \
        f"no camera frame reached encoder_node; answered: {sorted(client.answered_probes)} of {sorted(probes)}"


@contextlib.contextmanager
def running(process: RosProcess) -> Iterator[RosProcess]:
    """The process, killed at the end if a test left it running (a failing test must not leak nodes)."""
    try:
        yield process
    finally:
        process.kill()


def stamp_key(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)
