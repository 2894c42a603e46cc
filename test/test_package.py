"""The ament_python package as a robot builds it: package.xml validates, and `colcon build` yields the install
layout that `ros2 run` / `ros2 launch` look in."""

from __future__ import annotations

import ast
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
    (f"share/{PACKAGE}/config/cyclonedds_large_images.xml", False),
    (f"share/{PACKAGE}/config/fastdds_large_images.xml", False),
    (f"share/{PACKAGE}/config/fastdds_large_images_localhost.xml", False),
    (f"share/{PACKAGE}/shards/default/manifest.json", False),
    *((f"lib/{PACKAGE}/{script}", True) for script in
      ("encoder_node", "build_shards", "encode_images", "encode_bag", "bench")),
]

# Import root -> the package.xml dependency that provides it on a robot (a rosdep key: checked against the copy of
# rosdistro's rules in test/data), or None with the reason when no rosdep key exists and the README's pip line
# provides it.
ROS_IMPORTS = {name: name for name in ("rclpy", "rcl_interfaces", "ament_index_python", "sensor_msgs",
                                       "std_msgs", "diagnostic_msgs", "diagnostic_updater", "vision_msgs", "cv_bridge",
                                       "launch", "launch_ros")}
PYTHON_IMPORTS: dict[str, str | None] = {
    "numpy": "python3-numpy", "cv2": "python3-opencv", "PIL": "python3-pil", "tqdm": "python3-tqdm",
    "onnxruntime": "python3-onnxruntime-pip",
    "rosbags": "python3-rosbags-pip",
    "rknnlite": None,  # Rockchip's rknn-toolkit-lite2 wheel (aarch64): pip
    "sentencepiece": None,  # no rosdep key (Debian/Ubuntu have python3-sentencepiece, rosdistro does not): pip
    "matplotlib": None,  # `bench --plot` only, a development tool
    # The fleet extra (index_bags, search_index): a workstation's or a cluster's, never the robot's; pip ".[fleet]".
    "lancedb": None, "pyarrow": None, "ray": None,
}
ROSDEP_RULES = REPO / "test" / "data" / "rosdep_python_yaml.yaml"
# The robots' platforms: Humble on Ubuntu 22.04, Jazzy on Ubuntu 24.04.
UBUNTU_RELEASES = ("jammy", "noble")
# Declared without a direct import, on purpose (none at present).
INDIRECT_EXEC_DEPENDS: set[str] = set()
RUNTIME_SOURCES = [p for p in (REPO / PACKAGE).rglob("*.py") if "builder" not in p.parts]  # builder: workstation only


def runtime_imports() -> dict[str, set[str]]:
    """Third-party import roots of the installed runtime (package minus the offline builder) and the launch file."""
    roots: dict[str, set[str]] = {}
    for path in [*RUNTIME_SOURCES, *(REPO / "launch").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            else:
                continue
            for name in names:
                if name not in sys.stdlib_module_names and name != PACKAGE:
                    roots.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return roots


def test_package_xml_parses_and_validates() -> None:
    package = parse_package(str(REPO / "package.xml"))
    package.validate()  # raises InvalidPackage on any format-3 violation
    assert package.name == PACKAGE
    assert package.package_format == 3
    assert package.get_build_type() == "ament_python"


def test_package_xml_declares_what_the_code_imports_and_nothing_unused() -> None:
    """`rosdep install` must give a node that starts and can open its encoder: every ROS package and Python package
    the runtime imports is an exec_depend (Python ones through their rosdep keys); nothing declared goes unused."""
    package = parse_package(str(REPO / "package.xml"))
    imports = runtime_imports()
    unknown = set(imports) - set(ROS_IMPORTS) - set(PYTHON_IMPORTS)
    assert not unknown, f"imports with no package.xml mapping here: { {name: imports[name] for name in unknown} }"
    needed = {ROS_IMPORTS.get(name) or PYTHON_IMPORTS.get(name) for name in imports} - {None}
    declared = {dep.name for dep in package.exec_depends}
    assert needed <= declared, f"missing exec_depends: {sorted(needed - declared)}"
    assert declared - needed == INDIRECT_EXEC_DEPENDS, f"declared, never imported: {sorted(declared - needed)}"
    # test_depends: only what test/ros uses (launch_testing for test_launch_testing.py, pytest)
    assert {dep.name for dep in package.test_depends} == {"launch_testing", "python3-pytest"}
    assert "import launch_testing" in (REPO / "test" / "ros" / "test_launch_testing.py").read_text()


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


def documented_modules(layout: str) -> set[str]:
    """The package's modules a layout tree names: one entry per line, folders end in "/", two spaces per level."""
    lines = layout.split(f"\n{PACKAGE}/\n", 1)[1].splitlines()
    folders: list[str] = []
    modules = set()
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0 or not line.strip():
            break  # back at the repository's top level
        depth = indent // 2 - 1
        name = line.split()[0]
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        elif name.endswith(".py"):
            modules.add("/".join([*folders, name]))
    return modules


def test_development_doc_layout_names_every_module():
    """docs/development.md's Code layout is the map of the package: every module under its folder, and no module that
    is not there."""
    development = (REPO / "docs" / "development.md").read_text()
    layout = development.split("\n## Code layout\n", 1)[1].split("\n```\n", 2)[1]
    package = REPO / PACKAGE
    actual = {module.relative_to(package).as_posix() for module in package.rglob("*.py")
              if module.name != "__init__.py"}
    documented = documented_modules(layout)
    assert sorted(actual - documented) == [] and sorted(documented - actual) == []


def test_layout_reader_places_modules_under_their_folders():
    tree = (f"README.md        top\n{PACKAGE}/\n  a.py      x\n  node/\n    b.py   y\n    deep/\n      c.py  z\n"
            "  d.py      w\ntools/x.py\n")
    assert documented_modules(tree) == {"a.py", "node/b.py", "node/deep/c.py", "d.py"}


def ubuntu_rule(rules: dict, key: str, release: str) -> dict | list | None:
    """The rule rosdep applies for ``key`` on Ubuntu ``release``: per-release table ('*' = any other) or one rule."""
    ubuntu = rules[key].get("ubuntu")
    if isinstance(ubuntu, dict) and "pip" not in ubuntu:
        return ubuntu.get(release, ubuntu.get("*"))
    return ubuntu


def test_python_rosdep_keys_exist_in_rosdistro_and_install_what_the_code_imports() -> None:
    """Every Python rosdep key package.xml declares is in rosdistro (the copy of its rules in test/data) and installs,
    on Ubuntu 22.04 and 24.04, an apt package or the pip package of the import it stands for."""
    import yaml

    rules = yaml.safe_load(ROSDEP_RULES.read_text())
    package = parse_package(str(REPO / "package.xml"))
    declared = {dep.name for dep in package.exec_depends} | {dep.name for dep in package.test_depends}
    python_keys = {key for key in declared if key.startswith("python3-")}
    assert python_keys <= set(rules), f"not rosdep keys (rosdistro): {sorted(python_keys - set(rules))}"
    pip_names = {"onnxruntime": "onnxruntime", "rosbags": "rosbags"}  # import root -> PyPI name
    for name, key in PYTHON_IMPORTS.items():
        if key is None:
            continue
        for release in UBUNTU_RELEASES:
            rule = ubuntu_rule(rules, key, release)
            assert rule, f"{key} has no rule for Ubuntu {release}"
            if key.endswith("-pip"):
                assert rule["pip"]["packages"] == [pip_names[name]], (key, release, rule)
            else:
                assert isinstance(rule, list) and rule, (key, release, rule)
