"""The rclpy adapter's edges that can be checked without ROS: the off-ROS exit, import layering, the launch file."""

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "rk_siglip_ros"
ROS_PACKAGES = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "diagnostic_updater", "rcl_interfaces",
                "builtin_interfaces", "ament_index_python", "launch", "launch_ros", "launch_testing", "cv_bridge",
                "vision_msgs"}


def ros_available() -> bool:
    return importlib.util.find_spec("rclpy") is not None


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_off_ros_encoder_node_exits_with_one_line():
    if ros_available():
        pytest.skip("ROS 2 is sourced here; the off-ROS message cannot be shown")
    script = Path(sys.executable).parent / "encoder_node"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rk_siglip_ros.node.encoder_node"]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert done.stderr.splitlines() == ["encoder_node: ROS 2 is not sourced: source /opt/ros/<distro>/setup.bash"]
    assert done.stdout == ""


def test_only_node_py_imports_ros():
    offenders = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        allowed = ROS_PACKAGES if relative == "rk_siglip_ros/node/encoder_node.py" else set()
        if relative == "rk_siglip_ros/messages/camera_frames.py":
            allowed = {"cv_bridge"}  # the preferred converter on a robot, imported lazily when present
        found = (imported_roots(path) & ROS_PACKAGES) - allowed
        if found:
            offenders[relative] = sorted(found)
    assert offenders == {}


def test_node_helpers_stay_off_the_model_stack():
    for name in ("messages/camera_frames", "messages/embedding_msg", "node/mailbox", "node/stats", "node/config",
                 "node/service", "node/camera_cdr", "node/encoder_node"):
        roots = imported_roots(PACKAGE_DIR / f"{name}.py")
        assert not roots & {"torch", "transformers", "rknn", "onnx"}, (name, roots)


def test_node_config_stays_light_for_the_launch_file():
    """The launch file imports node.config: its constants come from backends/scheduler/camera_frames, which must not
    load an inference runtime or the model stack."""
    code = ("import sys, rk_siglip_ros.node.config\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnxruntime', 'rknnlite', 'rknn', 'torch', "
            "'transformers', 'onnx', 'rclpy'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_launch_arguments_that_override_the_params_file_default_to_empty():
    """A non-empty default would always replace the params file's value (launch_overrides skips only empty ones)."""
    tree = ast.parse((REPO / "launch" / "encoder.launch.py").read_text())
    defaults = {call.args[0].value: keyword.value for call in ast.walk(tree)
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DeclareLaunchArgument"
                for keyword in call.keywords if keyword.arg == "default_value"}
    from rk_siglip_ros.node.config import LAUNCH_ARGUMENTS

    for name in LAUNCH_ARGUMENTS:
        assert isinstance(defaults[name], ast.Constant) and defaults[name].value == "", name
