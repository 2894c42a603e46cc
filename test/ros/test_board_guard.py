"""No silent slowdown on a robot: the installed node with `backend: auto` on an RK3588 (a device tree that says so,
given through RK_SIGLIP_DEVICE_TREE as a container would bind-mount it) and no RKNN-Lite runtime refuses to start
with one line that names the missing package and the explicit CPU choice, instead of running on the CPU with
diagnostics OK. `backend: onnxruntime` on the same board starts: the CPU on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest
import ros_support

ros_support.require_ros()

from rk_siglip_ros.errors import EXIT_USAGE  # noqa: E402
from rk_siglip_ros.runtime.backends import DEVICE_TREE_ENV  # noqa: E402


def rk3588_device_tree(root: Path) -> Path:
    """/proc/device-tree as a Radxa ROCK 5B's kernel exposes it (the compatible list only)."""
    root.mkdir()
    (root / "compatible").write_bytes(b"radxa,rock-5b\0rockchip,rk3588\0")
    return root


def test_auto_on_an_rk3588_without_rknnlite_refuses_in_one_line(installed_env: dict[str, str], tiny_shards: Path,
                                                               tmp_path: Path) -> None:
    try:
        import rknnlite  # noqa: F401
        pytest.skip("rknn-toolkit-lite2 imports here (a board): the missing-runtime case cannot be shown")
    except ImportError:
        pass
    env = dict(installed_env, **{DEVICE_TREE_ENV: str(rk3588_device_tree(tmp_path / "device-tree"))})
    node = ros_support.run_node(env, "-p", f"shards:={tiny_shards}", "-p", "backend:=auto",
                                "-p", "image_topics:=[/guard_cam/image_raw]")
    with ros_support.running(node):
        code = node.wait()
    lines = [line for line in node.output.splitlines()
             if line.strip() and "is not multicast-capable" not in line and not line.startswith("[ros2run]")]
    assert code == EXIT_USAGE, node.output
    assert "Traceback" not in node.output, node.output
    assert len(lines) == 1, node.output
    assert "rockchip,rk3588 board" in lines[0] and "rknn-toolkit-lite2" in lines[0], lines[0]
    assert "onnxruntime to run on the CPU on purpose" in lines[0], lines[0]

    cpu = ros_support.run_node(env, "-p", f"shards:={tiny_shards}", "-p", "backend:=onnxruntime",
                               "-p", "image_topics:=[/guard_cam/image_raw]")
    with ros_support.running(cpu):
        assert cpu.wait_for_line("encoding"), cpu.output
        cpu.interrupt()
        assert cpu.wait() == 0, cpu.output
