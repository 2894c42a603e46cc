"""`make ros-demo`: the `make demo` sample camera bag played into the real encoder node, through `ros2 launch`.

Needs a ROS 2 (the Makefile sources one: the one already sourced, else ../shared/ros2-humble). Steps:
1. shards: the demo's (``demo_out/shards/<model>``; built once, reused afterwards);
2. the demo's sample camera bag (two cameras, rgb8 / bgr8 / mono8 raw and JPEG / PNG compressed);
3. ``colcon build`` of this package into ``demo_out/ros_ws`` (the installed launch file and executable are what run);
4. ``ros2 launch rk_siglip_ros encoder.launch.py shards:=... image_topics:=...``, and every frame of the bag
   published with rclpy as ``ros2 bag play`` sends it (serialized). By default one frame at a time, each after the
   previous one's embedding arrived, so every frame is encoded; ``--realtime`` plays at the recorded timing, and the
   node then keeps the newest frame per camera and drops what the encoder cannot take (the table shows those
   encoded);
5. the demo's table, from the embeddings the node published.

DDS stays on the loopback (ROS_LOCALHOST_ONLY=1; Jazzy: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) in a
ROS_DOMAIN_ID of its own, on the middleware the environment chose.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo  # noqa: E402 -- tools/demo.py, beside this file
import ros_workspace  # noqa: E402 -- tools/ros_workspace.py: the domain claim and colcon build the tests use too

from rk_siglip_ros.messages.embedding_msg import embedding_from_message  # noqa: E402

PACKAGE = ros_workspace.PACKAGE
OUTPUT_TOPIC = "/siglip/embeddings"
FRAME_TIMEOUT_S = 120.0  # liveness: a full-size random model on a busy CPU takes seconds per frame
START_TIMEOUT_S = 60.0


def no_ros_reason() -> str | None:
    reason = os.environ.get("RK_SIGLIP_NO_ROS")
    if reason:
        return reason
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return "no ROS 2 sourced: source /opt/ros/<distro>/setup.bash (or run `make ros-demo`)"
    return None


class Player:
    """An rclpy node that publishes the bag's frames and collects the encoder node's embeddings."""

    def __init__(self, topics: dict[str, str]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CompressedImage, Image

        kinds = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}
        rclpy.init()
        self.node = rclpy.create_node("rk_siglip_ros_demo_player")
        self.publishers = {topic: self.node.create_publisher(kinds[kind], topic, 10) for topic, kind in topics.items()}
        self.embeddings: list[Any] = []
        self.node.create_subscription(Image, OUTPUT_TOPIC, self.embeddings.append, 10)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self._running:
            self._executor.spin_once(timeout_sec=0.05)

    def wait_for(self, condition: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition():
                return True
            time.sleep(0.05)
        return bool(condition())

    def node_is_up(self) -> bool:
        return (all(p.get_subscription_count() > 0 for p in self.publishers.values())
                and self.node.count_publishers(OUTPUT_TOPIC) > 0)

    def close(self) -> None:
        import rclpy

        self._running = False
        self._thread.join(timeout=5)
        self.node.destroy_node()
        rclpy.try_shutdown()


def play(player: Player, bag: Path, realtime: bool) -> int:
    """Publish the bag's frames; returns how many."""
    from rk_siglip_ros.bag import open_bag

    count, first_log_ns, start = 0, None, time.monotonic()
    with open_bag(bag) as opened:
        chosen = [c for c in opened.reader.connections if c.topic in player.publishers]
        for connection, log_ns, raw in opened.reader.messages(connections=chosen):
            if realtime:
                first_log_ns = log_ns if first_log_ns is None else first_log_ns
                time.sleep(max(0.0, start + (log_ns - first_log_ns) * 1e-9 - time.monotonic()))
            player.publishers[connection.topic].publish(bytes(raw))
            count += 1
            if not realtime and not player.wait_for(lambda n=count: len(player.embeddings) >= n, FRAME_TIMEOUT_S):
                raise RuntimeError(f"no embedding for frame {count} within {FRAME_TIMEOUT_S:.0f} s")
    return count


def embedding_rows(messages: Sequence[Any]) -> list[tuple[int, str, np.ndarray]]:
    """(stamp ns, frame_id, vector) per embedding message, as demo.similarity_table takes them."""
    return [(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m.header.frame_id, embedding_from_message(m)[0])
            for m in messages]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/ros_demo.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=demo.DEFAULT_MODEL,
                        help=f"checkpoint folder, hub id or random:<preset> (default: {demo.DEFAULT_MODEL})")
    parser.add_argument("--out", type=Path, default=demo.DEFAULT_OUT, help="working folder (default: demo_out)")
    parser.add_argument("--backend", default="onnxruntime", help="the node's backend (default: onnxruntime)")
    parser.add_argument("--realtime", action="store_true",
                        help="play at the recorded timing (the node drops what it cannot encode)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reason = no_ros_reason()
    if reason is not None:
        print(f"ros-demo: skipped, {reason}. `make demo` runs the same bag through encode_bag without ROS.")
        return 0
    domain, _lock = ros_workspace.claim_domain_id()
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    ros_workspace.keep_dds_on_loopback(os.environ)  # the environment's middleware (RMW_IMPLEMENTATION) as it is
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "COLCON_IGNORE").touch()  # the working folder sits in the repository: colcon must not crawl it
    started = time.perf_counter()

    shards = out / "shards" / demo._slug(args.model)
    print(f"[1/4] shards: {args.model} -> {shards}", flush=True)
    demo.ensure_shards(args.model, shards, ("onnx",), rebuild=False)
    camera_bag = out / "sample_camera_bag"
    print(f"[2/4] sample camera bag -> {camera_bag}", flush=True)
    shutil.rmtree(camera_bag, ignore_errors=True)
    frames = demo.write_sample_bag(camera_bag)
    workspace = out / "ros_ws"
    print(f"[3/4] colcon build -> {workspace}/install (ROS 2 {os.environ.get('ROS_DISTRO', '?')}, "
          f"ROS_DOMAIN_ID={domain})", flush=True)
    env = ros_workspace.colcon_install(workspace)

    topics = {demo.FRONT_TOPIC: "sensor_msgs/msg/Image", demo.REAR_TOPIC: "sensor_msgs/msg/CompressedImage"}
    command = ["ros2", "launch", PACKAGE, "encoder.launch.py", f"shards:={shards.resolve()}",
               f"backend:={args.backend}", f"image_topics:=[{', '.join(topics)}]"]
    print(f"[4/4] {' '.join(command)}\n      + the bag's {len(frames)} frames published "
          f"{'at the recorded timing' if args.realtime else 'one at a time'}", flush=True)
    log_path = out / "ros_demo_launch.log"
    with open(log_path, "w") as log:
        launch = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        player = Player(topics)
        try:
            if not player.wait_for(player.node_is_up, START_TIMEOUT_S):
                raise RuntimeError(f"the encoder node did not come up; its log: {log_path}")
            played = play(player, camera_bag, args.realtime)
            player.wait_for(lambda: len(player.embeddings) >= played, 10 if args.realtime else 0)
        finally:
            os.killpg(launch.pid, signal.SIGINT)  # Ctrl-C, as from a terminal
            code = launch.wait(timeout=60)
            player.close()
    log_text = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text())  # launch's colour codes
    summary = [line for line in log_text.splitlines() if "stopped: published" in line]
    print(f"      node exit {code}; {summary[-1].split(']: ')[-1] if summary else 'no shutdown summary'}")

    rows = embedding_rows(player.embeddings)
    dims = sorted({len(vector) for _, _, vector in rows})
    print("\n" + "=" * 78)
    print(f"model            {args.model}")
    print(f"frames           {len(rows)} encoded by the node of {len(frames)} in the bag")
    print(f"embedding dim    {', '.join(map(str, dims)) or '-'}")
    print(f"\n{demo.similarity_table(frames, rows)}\n")
    if args.model.startswith("random:"):
        print(f"NOTE: weights are RANDOM ({args.model}): similarities are meaningless until you build from a real "
              "checkpoint.")
    print(f"\nros-demo finished in {time.perf_counter() - started:.0f} s (node log: {log_path})")
    return 0 if code == 0 and rows else 1


if __name__ == "__main__":
    sys.exit(main())
