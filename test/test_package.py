"""The ament_python package as a robot builds it: package.xml validates, and `colcon build` yields the install
layout that `ros2 run` / `ros2 launch` look in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "rk_siglip_ros"
COLCON = Path(sys.executable).with_name("colcon")

# (install-relative path, must be executable)
EXPECTED_INSTALL = [
    (f"share/ament_index/resource_index/packages/{PACKAGE}", False),
    (f"share/{PACKAGE}/package.xml", False),
    (f"share/{PACKAGE}/launch/encoder.launch.py", False),
    (f"share/{PACKAGE}/config/encoder.yaml", False),
    (f"share/{PACKAGE}/shards/default/manifest.json", False),
    *((f"lib/{PACKAGE}/{script}", True) for script in
      ("encoder_node", "build_shards", "encode_images", "encode_bag", "bench")),
]

ROBOT_EXEC_DEPENDS = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "diagnostic_updater", "cv_bridge",
                      "launch", "launch_ros", "python3-numpy", "python3-opencv", "python3-pil", "vision_msgs"}


def test_package_xml_parses_and_validates() -> None:
    package = parse_package(str(REPO / "package.xml"))
    package.validate()  # raises InvalidPackage on any format-3 violation
    assert package.name == PACKAGE
    assert package.package_format == 3
    assert package.get_build_type() == "ament_python"
    assert {dep.name for dep in package.exec_depends} >= ROBOT_EXEC_DEPENDS
    assert {"python3-pytest", "ament_flake8", "ament_pep257", "ament_copyright"} <= {d.name for d in
                                                                                    package.test_depends}


def tracked_files() -> list[str]:
    listing = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if line and (REPO / line).is_file()]


def make_workspace(root: Path, edit_setup: str | None = None) -> Path:
    """A colcon workspace with this repository cloned into src/ (tracked files only, as `git clone` gives) and a
    built shard set under shards/default, as a user has after build_shards."""
    source = root / "src" / PACKAGE
    for relative in tracked_files():
        target = source / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    shard_set = source / "shards" / "default"
    shard_set.mkdir(parents=True)
    (shard_set / "manifest.json").write_text("{}\n")
    (shard_set / "s0.onnx").write_bytes(b"\0")
    if edit_setup is not None:
        setup_py = source / "setup.py"
        lines = setup_py.read_text().splitlines(keepends=True)
        kept = [line for line in lines if edit_setup not in line]
        assert len(kept) == len(lines) - 1, f"expected exactly one setup.py line containing {edit_setup!r}"
        setup_py.write_text("".join(kept))
    return root


def colcon_build(workspace: Path) -> Path:
    if not COLCON.exists():
        pytest.skip(f"colcon is not installed next to {sys.executable}; run `make setup`")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMENT_", "COLCON_"))}
    result = subprocess.run([str(COLCON), "build", "--event-handlers", "console_direct-"], cwd=workspace, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout}\n{result.stderr}"
    return workspace / "install" / PACKAGE


def install_layout_problems(install: Path) -> list[str]:
    problems = []
    for relative, executable in EXPECTED_INSTALL:
        path = install / relative
        if not path.is_file():
            problems.append(f"missing {relative}")
        elif executable and not os.access(path, os.X_OK):
            problems.append(f"not executable {relative}")
    return problems


def test_colcon_build_install_layout(tmp_path: Path) -> None:
    install = colcon_build(make_workspace(tmp_path))
    assert install_layout_problems(install) == []
    # The installed console script resolves to the node's main() through the installed entry points.
    entry_points = next(install.glob(f"lib/python3*/site-packages/{PACKAGE}-*.egg-info/entry_points.txt"))
    assert f"encoder_node = {PACKAGE}.node.encoder_node:main" in entry_points.read_text()


def test_layout_check_catches_a_missing_data_files_line(tmp_path: Path) -> None:
    """Guards the guard: without the launch data_files line, the layout check must report the launch file."""
    install = colcon_build(make_workspace(tmp_path, edit_setup='(f"share/{PACKAGE}/launch"'))
    assert install_layout_problems(install) == [f"missing share/{PACKAGE}/launch/encoder.launch.py"]
