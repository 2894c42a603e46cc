"""tools/ros_matrix.py (`make test-ros`): which ROS 2 / middleware combinations it runs, and how it reads pytest's
counts for its closing table."""

from __future__ import annotations

from pathlib import Path

import ros_matrix


def fake_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "setup.bash").write_text("# a ROS 2 tree's setup script\n")
    return root


def fake_venv(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text("")
    return root


def test_every_combination_runs_only_where_its_tree_and_venv_are(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    fake_tree(shared / "ros2-humble")
    venv = fake_venv(tmp_path / ".venv")
    combos = {c.name: c for c in ros_matrix.combinations(shared, venv, tmp_path / ".venv-jazzy")}
    assert list(combos) == ["humble-cyclone", "humble-fastdds", "jazzy-fastdds", "jazzy-cyclone"]
    assert combos["humble-cyclone"].missing() is None and combos["humble-fastdds"].missing() is None
    assert "no ROS 2 tree" in combos["jazzy-fastdds"].missing()
    fake_tree(shared / "ros2-jazzy")
    assert "make setup-jazzy" in combos["jazzy-fastdds"].missing()
    fake_venv(tmp_path / ".venv-jazzy")
    assert combos["jazzy-fastdds"].missing() is None
    # Humble's Fast DDS is the dynamic-typesupport RMW (the tree has no other); Jazzy's default is left to Jazzy.
    assert combos["humble-fastdds"].rmw == "rmw_fastrtps_dynamic_cpp" and combos["jazzy-fastdds"].rmw is None


def test_counts_reads_pytests_closing_line() -> None:
    output = "test/ros/test_dds.py ....s..\n===== 1 failed, 97 passed, 1 skipped in 152.65s (0:02:32) =====\n"
    assert ros_matrix.counts(output) == {"failed": 1, "passed": 97, "skipped": 1}
    assert ros_matrix.counts("ERROR collecting\n===== 1 error in 0.49s =====\n") == {"error": 1}
    assert ros_matrix.counts("no summary here\n") == {}
