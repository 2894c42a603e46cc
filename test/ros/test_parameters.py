"""Parameters and /diagnostics of the installed node, driven with the `ros2` CLI as a user would: integers accepted
for every float parameter (params file, command line, run time), max_rate_hz changes at run time, read-only
parameters refused with the reason, the documented diagnostic keys and levels, one diagnostics period setting."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import ros_support

ros_support.require_ros()

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_cameras import camera_message, scene  # noqa: E402

NODE = "/encoder_node"
CAMERA = "/cam_param/image_raw"
# Every key docs/node.md's Diagnostics table documents (per-camera keys with this test's camera).
DOCUMENTED_KEYS = [
    "input rate (Hz)", "output rate (Hz)", "dropped, busy (per s)", "dropped, rate limit (per s)",
    "dropped, shutdown (per s)", "bad frames", "encoder errors", "latency stamp->publish p50 (ms)",
    "latency stamp->publish p95 (ms)", "encode latency p50 (ms)", "encode latency p95 (ms)", "in flight", "capacity",
    "core 0 busy (%)", f"{CAMERA}: input rate (Hz)", f"{CAMERA}: output rate (Hz)", f"{CAMERA}: dropped",
    f"{CAMERA}: bad frames", "total received", "total published", "last error", "last bad frame",
]


def param_set(env: dict[str, str], name: str, value: str) -> str:
    result = ros_support.ros2_cli(env, "param", "set", NODE, name, value)
    return (result.stdout + result.stderr).strip()


def param_get(env: dict[str, str], name: str) -> str:
    result = ros_support.ros2_cli(env, "param", "get", NODE, name)
    return (result.stdout + result.stderr).strip()


def statuses(diagnostics: list[tuple[float, DiagnosticArray]], since: float = 0.0) -> list[DiagnosticStatus]:
    return [s for t, a in list(diagnostics) for s in a.status if t >= since and s.name.endswith("siglip encoder")]


def values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


class Camera:
    """One 30 Hz camera in a background thread while the test talks to the node."""

    def __init__(self, client: ros_support.RosClient) -> None:
        import threading

        self.publisher = client.publisher(Image, CAMERA, ros_support.camera_qos())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        index = 0
        while not self._stop.wait(1 / 30):
            msg, _ = camera_message("rgb8", scene(0, index % 10), 1_700_000_000_000_000_000 + index * 33_000_000,
                                    "cam_param")
            self.publisher.publish(msg)
            index += 1

    def __enter__(self) -> Camera:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture()
def params_with_integers(tmp_path: Path) -> Path:
    """What people write: integers where the node declares floats (max_rate_hz, the diagnostics period)."""
    return ros_support.write_params(tmp_path / "ints.yaml", max_rate_hz=0, **{"diagnostic_updater.period": 1})


def test_integer_floats_in_a_params_file_run_time_changes_read_only_refusals_and_diagnostics(
        installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient,
        params_with_integers: Path) -> None:
    diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    node = ros_support.launch_node(installed_env, shards=str(tiny_shards), backend="onnxruntime",
                                   image_topics=CAMERA, params_file=str(params_with_integers))
    with ros_support.running(node), Camera(client) as camera:
        ros_support.wait_until_connected(client, [camera.publisher])

        # One diagnostics period setting: the standard diagnostic_updater.period, no second one.
        listing = ros_support.ros2_cli(installed_env, "param", "list", NODE).stdout
        assert "diagnostic_updater.period" in listing and "diagnostic_period" not in listing, listing

        # Frames flowing: OK, every documented key, the backend actually chosen in the hardware ID.
        assert ros_support.wait_until(lambda: any(s.level == DiagnosticStatus.OK for s in statuses(diagnostics)))
        ok = [s for s in statuses(diagnostics) if s.level == DiagnosticStatus.OK][-1]
        assert [key for key in DOCUMENTED_KEYS if key not in values(ok)] == []
        assert ok.hardware_id.endswith("onnxruntime") and "auto" not in ok.hardware_id, ok.hardware_id
        assert values(ok).get("total dropped_rate_limit", "0") == "0"  # totals are listed once non-zero

        # Run time: an integer, then a float; both take effect (frames are now held back by the rate limit).
        assert "Set parameter successful" in param_set(installed_env, "max_rate_hz", "2")
        assert "2" in param_get(installed_env, "max_rate_hz")
        changed = time.monotonic()
        assert ros_support.wait_until(lambda: any(int(values(s).get("total dropped_rate_limit", 0)) > 0
                                                  for s in statuses(diagnostics, since=changed)), 15)
        assert "Set parameter successful" in param_set(installed_env, "max_rate_hz", "0.5")
        assert "0.5" in param_get(installed_env, "max_rate_hz")

        # Values start would refuse are refused at run time too, with the reason; the old value stays.
        refused = param_set(installed_env, "max_rate_hz", "-1")
        assert "max_rate_hz must be a finite number >= 0" in refused, refused
        refused = param_set(installed_env, "max_rate_hz", "fast")
        assert "max_rate_hz must be a finite number >= 0" in refused, refused
        assert "0.5" in param_get(installed_env, "max_rate_hz")

        # Read-only parameters: refused, naming the parameter.
        for name, value in [("mode", "sequential"), ("shards", "/tmp"), ("diagnostic_updater.period", "5")]:
            refused = param_set(installed_env, name, value)
            assert "read-only" in refused and name in refused, refused
        node.interrupt()
        assert node.wait() == 0, node.output
    assert "Traceback" not in node.output


def test_silent_camera_warns_and_bad_frames_are_counted(
        installed_env: dict[str, str], tiny_shards: Path, client: ros_support.RosClient) -> None:
    diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    publisher = client.publisher(Image, CAMERA, ros_support.camera_qos())
    node = ros_support.launch_node(installed_env, shards=str(tiny_shards), backend="onnxruntime",
                                   image_topics=CAMERA)
    with ros_support.running(node):
        ros_support.wait_until_connected(client, [publisher])
        assert ros_support.wait_until(lambda: any(s.level == DiagnosticStatus.WARN and CAMERA in s.message
                                                  for s in statuses(diagnostics))), "no WARN for a silent camera"
        bad = Image(height=4, width=4, encoding="no_such_encoding", step=4)
        bad.data = bytes(16)
        sent = time.monotonic()
        publisher.publish(bad)
        assert ros_support.wait_until(lambda: any(
            s.level == DiagnosticStatus.WARN and "bad frame" in s.message
            and "no_such_encoding" in values(s)["last bad frame"] for s in statuses(diagnostics, since=sent)), 15)
        node.interrupt()
        assert node.wait() == 0, node.output
