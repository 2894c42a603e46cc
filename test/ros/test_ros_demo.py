"""`make ros-demo`: the demo's sample camera bag through the real node (ros2 launch) prints the demo's table, and the
table equals the one `make demo` prints for the same bag through encode_bag (same shards, same frames)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import ros_support

ros_support.require_ros()

TOOLS = ros_support.REPO / "tools"


def run_tool(name: str, out: Path, python: str = sys.executable) -> str:
    result = subprocess.run([python, str(TOOLS / name), "--model", "random:tiny", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ros_support.REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def similarity(text: str) -> np.ndarray:
    lines = text.splitlines()
    start = lines.index("cosine similarity") + 2
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append([float(value) for value in line.split()[1:]])
    return np.array(rows)


def test_ros_demo_prints_the_demo_table_from_the_node(tmp_path: Path) -> None:
    # demo.py builds the random:tiny shards (ros_demo reuses them): with the builder's Python where this one has no
    # torch (Jazzy's venv, see ros_support.build_shard_set).
    offline = run_tool("demo.py", tmp_path, ros_support.builder_python())
    through_ros = run_tool("ros_demo.py", tmp_path)
    assert "frames           10 encoded by the node of 10 in the bag" in through_ros, through_ros
    assert "node exit 0; stopped: published 10 embeddings" in through_ros
    legend = [line for line in through_ros.splitlines() if line[:3].strip().isdigit() and "_raw" in line]
    assert len(legend) == 10
    np.testing.assert_allclose(similarity(through_ros), similarity(offline), atol=0.0015)
