"""ROS benchmark for `make bench`: camera images into the real encoder node under a real ROS 2, side by side.

(a) delivery and node CPU while 3 cameras x 30 Hz are offered and almost all dropped (the `sim` backend is slowed
    to 0.5 frames/s): messages received / offered and the node process's CPU (% of one core) idle and while offered,
    for 640x480 and 1920x1080 rgb8, Cyclone's default configuration vs the shipped
    config/cyclonedds_large_images.xml, and typed vs serialized (`raw=True`, the node's way) subscriptions. Goals
    with the shipped config: >= 95 % of 640x480, >= 60 % of 1080p received; the CPU the offered frames cost (busy
    minus idle) with raw <= half of typed. Then, with the shipped config, a raw node beside a raw node that keeps
    glibc's malloc defaults instead of node/frame_memory's thresholds (what that setting saves); and the typed node
    beside a process whose subscriptions are never taken (Cyclone receives and reassembles every frame, nobody takes
    one): the floor any subscriber pays, whatever it does with the frames. Two processes at a time: with
    ROS_LOCALHOST_ONLY, Cyclone admits only so many participants per domain on one host.
(b) latency at 640x480, one camera at 10 Hz (the encoder is idle when each frame arrives, so no frame waits for a
    slot): camera message published -> embedding received, p50/p95, minus the encoder alone
    (`SiglipEncoder.encode` of the same image with the same timing profile) = what the node adds, for the same
    three node kinds. Goal <= 3 ms p50. Beside them a relay that publishes each camera message's header straight
    back (no encoder, no conversion): the DDS floor of that figure, a 0.9 MB message in and a small one out.

(c) the two middlewares side by side: the node (raw subscriptions) on Cyclone DDS with its shipped config and on
    Fast DDS (rmw_fastrtps_cpp where the ROS 2 has it, else rmw_fastrtps_dynamic_cpp), each with its own 3 cameras
    on its own middleware, for each pairing of camera QoS and node QoS that DDS matches (best-effort cameras /
    sensor_data node, reliable cameras / sensor_data node, reliable / reliable) and both sizes: delivery and CPU as
    in (a); Fast DDS with its defaults beside Fast DDS with config/fastdds_large_images*.xml in the cameras'
    processes; then latency, 1 camera at 10 Hz into the fast sim encoder, from the node's own diagnostics
    (camera stamp -> embedding published, minus the encoder's own time).

Every process runs with DDS on the loopback (ROS_LOCALHOST_ONLY=1; on Jazzy ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST)
and this benchmark's own ROS_DOMAIN_ID; (a) and (b) on rmw_cyclonedds_cpp. Each camera publisher and the node are
separate processes (as on a robot); publishers keep their middleware's defaults, the node gets the config under test
(CYCLONEDDS_URI) as the launch file does. Numbers are printed, goals missed are printed, nothing is asserted. Runs
in about nine minutes (--parts a,b: four).

    python benchmarks/ros_bench.py [--seconds 5] [--parts a,b,c]   (with a ROS 2 sourced; `make bench` sources one)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import ros_workspace  # noqa: E402 -- tools/ros_workspace.py: domain claims, loopback-only DDS

OUT = ROOT / "bench_out" / "ros"
CAMERAS = 3
RATE_HZ = 30.0
SIZES = {"640x480": (480, 640), "1920x1080": (1080, 1920)}
SHIPPED_CONFIG = ROOT / "config" / "cyclonedds_large_images.xml"
CYCLONE_RMW = "rmw_cyclonedds_cpp"
DDS_CONFIGS = ("default", "shipped")
# Node kinds: typed / serialized (raw, the node's way) subscriptions, both as encoder_node.main runs them (with
# frame_memory.keep_frame_buffers), and raw with glibc's malloc defaults.
SUBSCRIPTIONS = ("typed", "raw", "raw_glibc")
# Reference processes, not the encoder node: subscriptions never taken (a), a header relay (b).
REFERENCES = ("untaken", "relay")
# (a): two processes side by side
PAIRS = {"subscription": ("typed", "raw"), "malloc": ("raw", "raw_glibc"), "floor": ("typed", "untaken")}
PAIR_NOTES = {"malloc": "then, with the shipped config: the raw node beside one with glibc's malloc defaults",
              "floor": "then the typed node beside a process that never takes its frames"}
LABELS = {"typed": "typed", "raw": "raw", "raw_glibc": "raw, glibc malloc", "untaken": "never taken",
          "relay": "header relay"}
# sim timing: 2 s per shard = 0.5 frames/s through the 3-stage pipeline, so 99 % of the offered frames are dropped
# and the conversion of the few encoded ones hardly counts in the node's CPU; 3 x 10 ms for the latency run (an idle
# encoder answers in ~30 ms, well inside the 100 ms between frames).
SLOW_SHARD_MS = 2000.0
FAST_SHARD_MS = 10.0
LATENCY_RATE_HZ = 10.0
GOALS = {"640x480": 0.95, "1920x1080": 0.60}
IDLE_S = 2.0
LATENCY_BLOCKS = 4
DELIVERY_BLOCKS = 2
# Between blocks: the node of the block before finishes the frames DDS still holds for it (typed ones are taken and
# deserialised after its cameras stop), so none of its work lands in the next node's block and CPU figure.
SETTLE_S = 1.0
STARTUP_TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------------------- child processes


def ros_environment(dds_config: str | Path | None, rmw: str = CYCLONE_RMW) -> dict[str, str]:
    """The environment of every ROS process here: loopback only (Jazzy's way on Jazzy), the middleware ``rmw`` with
    the DDS config under test (a Cyclone or Fast DDS XML file, None = the middleware's defaults), and the
    ROS_DOMAIN_ID orchestrate() claimed (in os.environ, so its children inherit it)."""
    from rk_siglip_ros.node.dds import CYCLONE, CYCLONEDDS_URI, FASTDDS_PROFILES_FILE, config_family

    env = dict(os.environ, RMW_IMPLEMENTATION=rmw)
    ros_workspace.keep_dds_on_loopback(env)
    env.pop(CYCLONEDDS_URI, None)
    env.pop(FASTDDS_PROFILES_FILE, None)
    if dds_config is not None:
        if config_family(Path(dds_config)) == CYCLONE:
            env[CYCLONEDDS_URI] = f"file://{dds_config}"
        else:
            env[FASTDDS_PROFILES_FILE] = str(dds_config)
    return env


def fastdds_rmw() -> str | None:
    """The Fast DDS RMW this ROS 2 has: rmw_fastrtps_cpp (binary installs, Jazzy tree), else
    rmw_fastrtps_dynamic_cpp (the Humble tree here has only that one); None without Fast DDS."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    for name in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"):
        try:
            get_package_prefix(name)
        except PackageNotFoundError:
            continue
        return name
    return None


def run_publisher(args: argparse.Namespace) -> int:
    """Child: one camera. Publishes rgb8 frames on ``--topic`` at ``--rate`` Hz for each ``go SECONDS`` line read on
    stdin (printing a JSON summary after each), until stdin closes.

    The frame is serialised once; each publish only writes the stamp (now) into the CDR bytes, so the publisher costs
    little beside the transport itself. Prints ``ready`` once the topic has a subscriber."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_camera")
    msg = Image(height=args.height, width=args.width, encoding="rgb8", step=args.width * 3)
    msg.header.frame_id = args.topic.strip("/").split("/")[0]
    msg.data = np.random.default_rng(0).integers(0, 256, args.height * args.width * 3, dtype=np.uint8).tobytes()
    template = bytearray(serialize_message(msg))
    # (a)/(b): best effort, as the sensor_data profile; (c) also reliable (depth 10), as many camera drivers and
    # image_transport publish by default.
    qos = qos_profile_sensor_data if args.qos == "best_effort" else 10
    publisher = node.create_publisher(Image, args.topic, qos)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while publisher.get_subscription_count() < 1:
        if time.monotonic() > deadline:
            print(f"no subscriber on {args.topic}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print("ready", flush=True)
    for line in sys.stdin:
        seconds = float(line.split()[1])
        offered, start = 0, time.monotonic()
        while (due := start + offered / args.rate) < start + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            now = time.time()
            # CDR: 4-byte encapsulation header, then header.stamp (int32 sec, uint32 nanosec), little endian.
            struct.pack_into("<iI", template, 4, int(now), int((now % 1.0) * 1e9))
            publisher.publish(bytes(template))
            offered += 1
        print(json.dumps({"offered": offered, "seconds": time.monotonic() - start}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def run_node(args: argparse.Namespace) -> int:
    """Child: the encoder node (typed or serialized subscriptions), parameters from ``--ros-args``; SIGINT ends it."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from rk_siglip_ros.node.encoder_node import EncoderNode
    from rk_siglip_ros.node.frame_memory import keep_frame_buffers

    if args.subscription != "raw_glibc":
        keep_frame_buffers()  # as encoder_node.main does
    rclpy.init(args=["--ros-args", *args.ros_args])
    node = EncoderNode(serialized=args.subscription != "typed")
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def run_reference(args: argparse.Namespace) -> int:
    """Child: a reference process instead of the encoder node, subscribed as the node is (sensor_data QoS, the same
    ``image_topics`` / ``output_topic`` parameters). ``untaken``: its subscriptions are never taken, so DDS receives
    every frame and nothing more happens. ``relay``: takes each frame serialized and publishes its header at once on
    ``output_topic`` as an empty sensor_msgs/Image. SIGINT ends it."""
    import rclpy
    from rclpy.callback_groups import CallbackGroup
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    class NeverExecuted(CallbackGroup):
        """Keeps its subscriptions out of the executor's wait set: their messages stay in DDS, never taken."""

        def can_execute(self, entity: Any) -> bool:
            return False

        def beginning_execution(self, entity: Any) -> bool:
            return False

        def ending_execution(self, entity: Any) -> None:
            pass

    rclpy.init(args=["--ros-args", *args.ros_args])
    node = rclpy.create_node("bench_reference")
    topics = node.declare_parameter("image_topics", [""]).value
    output = node.create_publisher(Image, node.declare_parameter("output_topic", "").value, 10)

    def relay(serialized: bytes) -> None:
        msg = Image()
        msg.header.stamp.sec, msg.header.stamp.nanosec = struct.unpack_from("<iI", serialized, 4)  # see run_publisher
        output.publish(msg)

    for topic in topics:
        if args.subscription == "untaken":
            node.create_subscription(Image, topic, lambda msg: None, qos_profile_sensor_data,
                                     callback_group=NeverExecuted())
        else:
            node.create_subscription(Image, topic, relay, qos_profile_sensor_data, raw=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# ------------------------------------------------------------------------------------------- orchestration


class Observer:
    """The benchmark's own ROS node: reads the encoder nodes' /diagnostics totals and times their embeddings."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node("bench_observer")
        self._lock = threading.Lock()
        self.diagnostics: list[tuple[float, str, dict[str, str]]] = []  # (monotonic time, node name, values)
        self.latencies_s: dict[str, list[float]] = {}  # output topic -> published -> received, seconds
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self._executor.spin_once(timeout_sec=0.1)

    def watch_embeddings(self, topic: str) -> None:
        from sensor_msgs.msg import Image

        self.latencies_s[topic] = []
        self.node.create_subscription(Image, topic, lambda msg: self._on_embedding(topic, msg), 10)

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if "siglip" in status.name:
                with self._lock:
                    self.diagnostics.append((time.monotonic(), status.name.split(":")[0],
                                             {kv.key: kv.value for kv in status.values}))

    def _on_embedding(self, topic: str, msg: Any) -> None:
        received = time.time()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self._lock:
            self.latencies_s[topic].append(received - stamp)

    def take_latencies(self, topic: str) -> list[float]:
        with self._lock:
            samples, self.latencies_s[topic] = self.latencies_s[topic], []
        return samples

    def wait_for_diagnostics(self, node: str, after: float, timeout_s: float = 10.0) -> dict[str, str] | None:
        """The first diagnostics values ``node`` reported after monotonic time ``after`` (None on timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for stamp, name, values in self.diagnostics:
                    if stamp > after and name == node:
                        return values
            time.sleep(0.05)
        return None

    def latency_reports(self, node: str, after: float) -> dict[str, list[float]]:
        """The latency figures (ms) of every diagnostics report of ``node`` since monotonic time ``after`` that had
        frames in its period: "latency stamp->publish p50 (ms)" -> [one value per report], ..."""
        figures: dict[str, list[float]] = {}
        with self._lock:
            reports = [values for stamp, name, values in self.diagnostics if stamp > after and name == node]
        for values in reports:
            for key, value in values.items():
                if "latency" in key and value != "n/a":
                    figures.setdefault(key, []).append(float(value))
        return figures

    def close(self) -> None:
        self._stop.set()
        self._thread.join()  # before shutdown: a thread still waiting in rclpy aborts the interpreter at exit
        self._executor.shutdown()
        self.node.destroy_node()


# Cyclone DDS's own threads (receive, delivery queues, timed events, ...); everything else in the node is Python.
DDS_THREADS = ("recv", "dq.", "tev", "gc", "lease", "xmit", "sendq")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a process so far: all threads, and Cyclone DDS's threads alone."""
    import psutil

    total = dds = 0.0
    for thread in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            name = ""
        total += thread.user_time + thread.system_time
        dds += (thread.user_time + thread.system_time) if name.startswith(DDS_THREADS) else 0.0
    return total, dds


class Rig:
    """One encoder node (a subscription kind, a DDS config), or a reference process in its place (REFERENCES), under
    its own topic prefix, and one publisher process per camera, as on a robot (camera drivers keep Cyclone's
    defaults)."""

    def __init__(self, *, prefix: str, subscription: str, dds: str, shards: Path, profile: Path, size: str,
                 cameras: int, rmw: str = CYCLONE_RMW, qos: str = "sensor_data", camera_qos: str = "best_effort",
                 name: str | None = None, camera_dds: Path | None = None) -> None:
        height, width = SIZES[size]
        self.output_topic = f"{prefix}/embeddings"
        self.encoder_node = subscription not in REFERENCES  # references publish no diagnostics
        # Two rigs run side by side: their node names (and so their diagnostics) must differ.
        self.name = name or f"{'encoder' if self.encoder_node else 'reference'}_{subscription}"
        topics = [f"{prefix}/cam{i}/image_raw" for i in range(cameras)]
        ros_args = ["-r", f"__node:={self.name}", "-p", f"shards:={shards}", "-p", "backend:=sim",
                    "-p", "mode:=pipeline", "-p", f"timing_profile:={profile}",
                    "-p", f"image_topics:=[{','.join(topics)}]", "-p", f"output_topic:={self.output_topic}",
                    "-p", f"qos:={qos}"]
        config = shipped_config(rmw) if dds == "shipped" else None
        self.node = subprocess.Popen([sys.executable, __file__, "node", "--subscription", subscription,
                                      "--ros-args", *ros_args], env=ros_environment(config, rmw),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.publishers: list[Any] = []
        try:
            for topic in topics:
                self.publishers.append(subprocess.Popen(
                    [sys.executable, __file__, "publish", "--topic", topic, "--width", str(width), "--height",
                     str(height), "--rate", str(RATE_HZ if cameras > 1 else LATENCY_RATE_HZ), "--qos", camera_qos],
                    env=ros_environment(camera_dds, rmw), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for publisher in self.publishers:
                line = publisher.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"a camera publisher did not start (said {line!r})")
        except BaseException:
            self.close()
            raise

    def offer(self, seconds: float) -> dict[str, float]:
        """Every camera publishes for ``seconds``; returns frames offered and the longest publishing time."""
        for publisher in self.publishers:
            publisher.stdin.write(f"go {seconds}\n")
            publisher.stdin.flush()
        summaries = [json.loads(publisher.stdout.readline()) for publisher in self.publishers]
        return {"offered": sum(s["offered"] for s in summaries), "seconds": max(s["seconds"] for s in summaries)}

    def cpu_percent(self, action: Any) -> tuple[Any, float, float]:
        """``action()``, and the node process's CPU meanwhile in % of one core: all of it, and DDS's threads."""
        (total, dds), started = cpu_seconds(self.node.pid), time.monotonic()
        result = action()
        (total_after, dds_after), elapsed = cpu_seconds(self.node.pid), time.monotonic() - started
        return result, 100.0 * (total_after - total) / elapsed, 100.0 * (dds_after - dds) / elapsed

    def interrupt(self) -> None:
        """Ctrl-C to the node (it finishes the frames in its encoder, up to 5 s, before it exits)."""
        if self.node.poll() is None:
            self.node.send_signal(signal.SIGINT)

    def close(self) -> None:
        for publisher in self.publishers:
            if publisher.poll() is None:
                publisher.stdin.close()
        for publisher in self.publishers:
            try:
                publisher.wait(timeout=15)
            except subprocess.TimeoutExpired:
                publisher.kill()
        if self.node.poll() is None:
            self.node.send_signal(signal.SIGINT)
            try:
                self.node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait()


def delivery_runs(observer: Observer, *, pair: str, size: str, dds: str, shards: Path, profile: Path,
                  seconds: float) -> list[dict[str, Any]]:
    """(a) for one size and DDS config: the two nodes of ``pair`` side by side, each with its own 3 cameras, offered
    frames in alternating blocks (so machine load hits both alike). Per node: CPU idle (cameras connected, silent)
    and while its cameras publish, frames offered and received."""
    kinds = PAIRS[pair]
    rigs = {kind: (lambda kind=kind: Rig(prefix=f"/bench_{kind}", subscription=kind, dds=dds, shards=shards,
                                         profile=profile, size=size, cameras=CAMERAS)) for kind in kinds}
    runs = side_by_side(observer, rigs, seconds)
    return [{"pair": pair, "size": size, "dds": dds, "subscription": kind, **runs[kind]} for kind in kinds]


def side_by_side(observer: Observer, rigs: dict[str, Any], seconds: float) -> dict[str, dict[str, Any]]:
    """Rigs (name -> a function that starts one) run side by side, offered frames in alternating blocks so machine
    load hits all alike. Per rig: node CPU idle (cameras connected, silent) and while its cameras publish, frames
    offered and received (from the node's diagnostics; None for a reference process), UDP drops meanwhile, and the
    node's own latency figures of its last diagnostics."""
    from rk_siglip_ros.node.dds import udp_receive_buffer_errors

    started: dict[str, Rig] = {}
    runs = {name: {"offered": 0, "seconds": 0.0, "busy_cpu": 0.0, "dds_cpu": 0.0, "udp_drops": 0} for name in rigs}
    first_block = time.monotonic()
    try:
        for name, start in rigs.items():
            started[name] = start()
        for rig in [rig for rig in started.values() if rig.encoder_node]:  # references are ready once matched
            if observer.wait_for_diagnostics(rig.name, after=time.monotonic(), timeout_s=STARTUP_TIMEOUT_S) is None:
                raise RuntimeError(f"the encoder node {rig.name} published no diagnostics")
        for name, rig in started.items():
            _, runs[name]["idle_cpu"], _ = rig.cpu_percent(lambda: time.sleep(IDLE_S))
        for _ in range(DELIVERY_BLOCKS):
            for name, rig in started.items():
                time.sleep(SETTLE_S)
                drops = udp_receive_buffer_errors() or 0
                summary, cpu, dds_cpu = rig.cpu_percent(lambda rig=rig: rig.offer(seconds / DELIVERY_BLOCKS))
                runs[name]["udp_drops"] += (udp_receive_buffer_errors() or 0) - drops
                runs[name]["offered"] += summary["offered"]
                runs[name]["seconds"] += summary["seconds"]
                runs[name]["busy_cpu"] += cpu / DELIVERY_BLOCKS
                runs[name]["dds_cpu"] += dds_cpu / DELIVERY_BLOCKS
        time.sleep(0.5)  # frames still in the encoder finish; then a diagnostics period that covers them
        for name, rig in started.items():
            if rig.encoder_node:
                values = observer.wait_for_diagnostics(rig.name, after=time.monotonic()) or {}
                runs[name]["received"] = int(values.get("total received", 0))
                runs[name]["latency_ms"] = observer.latency_reports(rig.name, after=first_block)
            else:
                runs[name]["received"] = None  # nothing counts what a reference process receives
            runs[name]["offered_hz"] = runs[name]["offered"] / runs[name]["seconds"]
    finally:
        for rig in started.values():
            rig.interrupt()  # all drain at once
        for rig in started.values():
            rig.close()
    return runs


def prepare(out: Path) -> tuple[Path, Path, Path]:
    """A random:tiny shard set (built once) and the two sim timing profiles."""
    from rk_siglip_ros.manifest import ManifestError, load_manifest

    shards = out / "tiny"
    try:
        load_manifest(shards)
    except ManifestError:
        from rk_siglip_ros.builder.build import build_shards

        print("building random:tiny shards ...", flush=True)
        build_shards("random:tiny", shards, profile="pipeline3", formats=("onnx",), force=True, progress=False)
    profiles = []
    for name, shard_ms in (("slow", SLOW_SHARD_MS), ("fast", FAST_SHARD_MS)):
        path = out / f"timing-{name}.json"
        path.write_text(json.dumps({"name": f"bench-{name}", "per_call_ms": shard_ms, "dense_ms_per_gmac": 0.0}))
        profiles.append(path)
    return shards, profiles[0], profiles[1]


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(samples), [50, 95]) * 1000.0
    return float(p50), float(p95)


def latency_runs(observer: Observer, shards: Path, profile: Path, seconds: float) -> dict[str, list[float]]:
    """(b): blocks of the encoder alone and of each node kind, interleaved so machine load hits all alike.

    One camera at 10 Hz into an encoder that answers in ~30 ms: no frame waits for the encoder, so the difference
    between the node and the encoder alone is what the node adds (DDS in and out, deserialisation, conversion,
    dispatch, publishing). The header relay's own latency is the DDS in and out of that."""
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    rigs = {kind: Rig(prefix=f"/bench_{kind}", subscription=kind, dds="shipped", shards=shards, profile=profile,
                      size="640x480", cameras=1) for kind in (*SUBSCRIPTIONS, "relay")}
    samples: dict[str, list[float]] = {"encoder alone": [], **{kind: [] for kind in rigs}}
    try:
        for rig in rigs.values():
            observer.watch_embeddings(rig.output_topic)
        with SiglipEncoder.open(shards, backend="sim", mode="pipeline", timing_profile=str(profile)) as encoder:
            encoder.encode(image)
            block_s = seconds / LATENCY_BLOCKS
            for _ in range(LATENCY_BLOCKS):
                for _ in range(round(block_s * LATENCY_RATE_HZ)):
                    started = time.perf_counter()
                    encoder.encode(image)
                    samples["encoder alone"].append(time.perf_counter() - started)
                    time.sleep(max(0.0, 1.0 / LATENCY_RATE_HZ - samples["encoder alone"][-1]))
                for kind, rig in rigs.items():
                    rig.offer(block_s)
                    time.sleep(0.3)  # the last embedding arrives
                    samples[kind] += observer.take_latencies(rig.output_topic)
    finally:
        for rig in rigs.values():
            rig.close()
    return samples


def print_delivery(results: list[dict[str, Any]]) -> None:
    print(f"\n(a) {CAMERAS} cameras x {RATE_HZ:.0f} Hz rgb8 offered (best-effort publishers, node QoS sensor_data), "
          f"encoder {1000 / SLOW_SHARD_MS:.1f} frames/s, so almost all are dropped; node CPU in % of one core: idle "
          f"(cameras connected, silent), while offered, and the difference = the cost of the offered frames")
    print("  (CPU frames = busy - idle; of it, DDS = Cyclone's own threads, the same work typed or raw; UDP drops = "
          "datagrams the kernel dropped for a full receive buffer meanwhile)")
    print(f"  {'size':<10} {'DDS config':<10} {'node':<17} {'offered/s':>9} {'received':>15} "
          f"{'received %':>10} {'CPU idle':>8} {'CPU busy':>8} {'CPU frames':>10} {'of it DDS':>9} {'UDP drops':>9}")
    for r in results:
        if r["subscription"] == PAIRS[r["pair"]][0] and r["pair"] in PAIR_NOTES:
            print(f"  ({PAIR_NOTES[r['pair']]})")
        counted = r["received"] is not None  # a reference process counts nothing
        received = f"{r['received'] if counted else '-':>7}/{r['offered']:<7}"
        share = f"{100.0 * r['received'] / max(r['offered'], 1):.1f}" if counted else "-"
        print(f"  {r['size']:<10} {r['dds']:<10} {LABELS[r['subscription']]:<17} {r['offered_hz']:>9.1f} "
              f"{received} {share:>10} {r['idle_cpu']:>8.1f} {r['busy_cpu']:>8.1f} "
              f"{frames_cpu(r):>10.1f} {r['dds_cpu']:>9.1f} {r['udp_drops']:>9}")
    print("  goals (shipped config, raw = the node's subscription):")
    for size, goal in GOALS.items():
        for r in results:
            if (r["pair"], r["size"], r["dds"], r["subscription"]) == ("subscription", size, "shipped", "raw"):
                share = r["received"] / max(r["offered"], 1)
                verdict = "met" if share >= goal else "MISSED"
                print(f"    {size}: received {100 * share:.1f} % (goal >= {100 * goal:.0f} %): {verdict}")
    for size in SIZES:
        runs = {(r["dds"], r["subscription"]): r for r in results if r["size"] == size and r["pair"] == "subscription"}
        if ("shipped", "typed") in runs and ("shipped", "raw") in runs:
            raw, typed = runs[("shipped", "raw")], runs[("shipped", "typed")]
            ratio = frames_cpu(raw) / max(frames_cpu(typed), 1e-9)
            verdict = "met" if ratio <= 0.5 else "MISSED"
            python_ratio = (frames_cpu(raw) - raw["dds_cpu"]) / max(frames_cpu(typed) - typed["dds_cpu"], 1e-9)
            print(f"    {size}: CPU for the offered frames, raw / typed = {ratio:.2f} (goal <= 0.50): {verdict}; "
                  f"without DDS's own threads {python_ratio:.2f}; per frame received: raw "
                  f"{cpu_ms_per_frame(raw):.2f} ms, typed {cpu_ms_per_frame(typed):.2f} ms")
        floor = {r["subscription"]: r for r in results if r["size"] == size and r["pair"] == "floor"}
        if floor:
            print(f"    {size}: the floor, subscriptions never taken / the typed node beside them = "
                  f"{frames_cpu(floor['untaken']) / max(frames_cpu(floor['typed']), 1e-9):.2f} (DDS receiving the "
                  "frames costs this much whatever the subscriber does)")
        malloc = {r["subscription"]: r for r in results if r["size"] == size and r["pair"] == "malloc"}
        if malloc:
            raw, glibc = malloc["raw"], malloc["raw_glibc"]
            print(f"    {size}: frame buffers reused (node/frame_memory) vs glibc's malloc defaults, raw: node CPU per "
                  f"frame received {cpu_ms_per_frame(raw):.2f} vs {cpu_ms_per_frame(glibc):.2f} ms "
                  f"({cpu_ms_per_frame(raw) / max(cpu_ms_per_frame(glibc), 1e-9):.2f}x)")


def print_latency(samples: dict[str, list[float]]) -> None:
    alone = samples["encoder alone"]
    a50, a95 = percentiles_ms(alone)
    print(f"\n(b) latency at 640x480, 1 camera x {LATENCY_RATE_HZ:.0f} Hz, sim encoder {3 * FAST_SHARD_MS:.0f} ms "
          f"(3 pipeline stages), shipped DDS config; {LATENCY_BLOCKS} interleaved blocks each")
    print(f"  encoder alone (SiglipEncoder.encode, {len(alone)} frames): p50 {a50:.2f} ms, p95 {a95:.2f} ms")
    relay = samples["relay"]
    floor_p50 = percentiles_ms(relay)[0] if relay else None
    if floor_p50 is not None:
        print(f"  DDS floor, header relay (camera message published -> its header relayed back, no encoder, "
              f"{len(relay)} frames): p50 {floor_p50:.2f} ms, p95 {percentiles_ms(relay)[1]:.2f} ms")
    for kind in SUBSCRIPTIONS:
        if not samples[kind]:
            print(f"  node, {LABELS[kind]}: no embeddings received")
            continue
        n50, n95 = percentiles_ms(samples[kind])
        goal = f" (goal p50 <= 3 ms: {'met' if n50 - a50 <= 3.0 else 'MISSED'})" if kind == "raw" else ""
        beyond = f"; beyond the DDS floor p50 {n50 - a50 - floor_p50:.2f} ms" if floor_p50 is not None else ""
        print(f"  node, {LABELS[kind]} (camera message published -> embedding received, {len(samples[kind])} "
              f"frames): p50 {n50:.2f} ms, p95 {n95:.2f} ms; added by the node: p50 {n50 - a50:.2f} ms, "
              f"p95 {n95 - a95:.2f} ms{goal}{beyond}")


# (c) the two middlewares side by side: (camera publisher QoS, node subscription QoS). A reliable node cannot match a
# best-effort camera (DDS refuses the pair; the node warns), so that pairing is not measured.
MIDDLEWARE_QOS = (("best_effort", "sensor_data"), ("reliable", "sensor_data"), ("reliable", "reliable"))
AUTO = "auto"


def node_qos(choice: str, rmw: str) -> str:
    from rk_siglip_ros.node.dds import node_qos as resolve

    return resolve(choice, rmw)


def middlewares(fastdds: str) -> dict[str, str]:
    return {"Cyclone DDS": CYCLONE_RMW, "Fast DDS": fastdds}


def shipped_config(rmw: str) -> Path | None:
    """The node's dds_config:=large_images file for ``rmw``, as the launch file picks it (none for Fast DDS)."""
    return None if "fastrtps" in rmw else SHIPPED_CONFIG


def camera_profile(rmw: str) -> Path:
    """Fast DDS's shipped profile for the camera drivers (DDS stays on the loopback here: the _localhost variant)."""
    from rk_siglip_ros.node.dds import FASTDDS, large_images_file

    return ROOT / "config" / large_images_file(FASTDDS, ros_workspace.localhost_only())


def middleware_rig(label: str, rmw: str, *, dds: str, size: str, shards: Path, profile: Path, camera_qos: str,
                   qos: str, cameras: int = CAMERAS, camera_dds: Path | None = None) -> Any:
    short = "".join(ch for ch in label.lower() if ch.isalnum())
    return lambda: Rig(prefix=f"/mw_{short}", subscription="raw", dds=dds, shards=shards, profile=profile, size=size,
                       cameras=cameras, rmw=rmw, qos=qos, camera_qos=camera_qos, name=f"encoder_{short}",
                       camera_dds=camera_dds)


def middleware_runs(observer: Observer, *, fastdds: str, shards: Path, slow: Path, fast: Path,
                    seconds: float) -> list[dict[str, Any]]:
    """(c): the node (raw subscriptions, as it runs) on Cyclone DDS and on Fast DDS side by side, each with its own
    cameras on its own middleware and its dds_config:=large_images file: delivery and CPU per camera/node QoS
    pairing and size; Fast DDS with its defaults beside Fast DDS with the shipped profile in the cameras' processes
    (where it acts); then latency with each node's default subscription."""
    results = []
    for size in SIZES:
        for camera_qos, qos in MIDDLEWARE_QOS:
            print(f"  run: {size}, cameras {camera_qos}, node {qos}: Cyclone DDS and Fast DDS side by side ...",
                  flush=True)
            rigs = {label: middleware_rig(label, rmw, dds="shipped", size=size, shards=shards, profile=slow,
                                          camera_qos=camera_qos, qos=qos)
                    for label, rmw in middlewares(fastdds).items()}
            runs = side_by_side(observer, rigs, seconds)
            results += [{"part": "delivery", "size": size, "middleware": label, "dds": "shipped",
                         "camera_qos": camera_qos, "qos": qos, **run} for label, run in runs.items()]
        for camera_qos, qos in MIDDLEWARE_QOS[:2]:
            print(f"  run: {size}, cameras {camera_qos}, node {qos}: Fast DDS defaults and Fast DDS with the shipped "
                  "profile in the cameras' processes side by side ...", flush=True)
            rigs = {"Fast DDS, defaults": middleware_rig("fastdds defaults", fastdds, dds="default", size=size,
                                                         shards=shards, profile=slow, camera_qos=camera_qos, qos=qos),
                    "Fast DDS, camera profile": middleware_rig("fastdds profile", fastdds, dds="default", size=size,
                                                               shards=shards, profile=slow, camera_qos=camera_qos,
                                                               qos=qos, camera_dds=camera_profile(fastdds))}
            runs = side_by_side(observer, rigs, seconds)
            results += [{"part": "fastdds config", "size": size, "middleware": label, "dds": label,
                         "camera_qos": camera_qos, "qos": qos, **run} for label, run in runs.items()]
    for size in SIZES:
        print(f"  run: latency {size}: Cyclone DDS and Fast DDS side by side ...", flush=True)
        # Each node with its default subscription (qos: auto), reliable cameras (what Fast DDS needs).
        rigs = {label: middleware_rig(label, rmw, dds="shipped", size=size, shards=shards, profile=fast,
                                      camera_qos="reliable", qos=node_qos(AUTO, rmw), cameras=1)
                for label, rmw in middlewares(fastdds).items()}
        runs = side_by_side(observer, rigs, seconds)
        results += [{"part": "latency", "size": size, "middleware": label, "dds": "shipped",
                     "camera_qos": "reliable", "qos": node_qos(AUTO, middlewares(fastdds)[label]), **run}
                    for label, run in runs.items()]
    return results


def diagnostic_ms(run: dict[str, Any], key: str) -> float | None:
    """The median over the run's diagnostics reports of one latency figure (None without any)."""
    values = run.get("latency_ms", {}).get(key, [])
    return float(np.median(values)) if values else None


def print_middlewares(results: list[dict[str, Any]], fastdds: str) -> None:
    print(f"\n(c) Cyclone DDS ({CYCLONE_RMW}) and Fast DDS ({fastdds}) side by side: the node with raw subscriptions "
          f"and its dds_config:=large_images file, the cameras on the same middleware with its defaults (then Fast DDS "
          f"with its profile in the cameras too); {CAMERAS} cameras x {RATE_HZ:.0f} Hz rgb8, encoder "
          f"{1000 / SLOW_SHARD_MS:.1f} frames/s")
    print(f"  {'size':<10} {'cameras':<12} {'node QoS':<12} {'middleware':<22} {'offered/s':>9} {'received':>15} "
          f"{'received %':>10} {'CPU idle':>8} {'CPU busy':>8} {'CPU frames':>10} {'UDP drops':>9}")
    for r in [r for r in results if r["part"] in ("delivery", "fastdds config")]:
        received = f"{r['received']:>7}/{r['offered']:<7}"
        print(f"  {r['size']:<10} {r['camera_qos']:<12} {r['qos']:<12} {r['middleware']:<22} {r['offered_hz']:>9.1f} "
              f"{received} {100.0 * r['received'] / max(r['offered'], 1):>10.1f} {r['idle_cpu']:>8.1f} "
              f"{r['busy_cpu']:>8.1f} {frames_cpu(r):>10.1f} {r['udp_drops']:>9}")
    print(f"  latency, 1 camera x {LATENCY_RATE_HZ:.0f} Hz (reliable), node qos: auto (Cyclone sensor_data, Fast DDS "
          f"reliable), sim encoder "
          f"{3 * FAST_SHARD_MS:.0f} ms; the node's own diagnostics (median over its reports): camera stamp -> "
          "embedding published, and of it the encoder (the rest is DDS in, conversion, dispatch):")
    for r in [r for r in results if r["part"] == "latency"]:
        total50, total95 = diagnostic_ms(r, "latency stamp->publish p50 (ms)"), \
            diagnostic_ms(r, "latency stamp->publish p95 (ms)")
        encode50 = diagnostic_ms(r, "encode latency p50 (ms)")
        if total50 is None or encode50 is None:
            print(f"  {r['size']:<10} {r['middleware']:<22} no latency figures (received {r['received']})")
            continue
        print(f"  {r['size']:<10} {r['middleware']:<22} p50 {total50:.1f} ms, p95 {total95:.1f} ms; encoder p50 "
              f"{encode50:.1f} ms; beyond the encoder p50 {total50 - encode50:.1f} ms "
              f"(received {r['received']}/{r['offered']})")


def frames_cpu(run: dict[str, Any]) -> float:
    """CPU the offered frames cost a process: busy minus idle, % of one core."""
    return float(run["busy_cpu"] - run["idle_cpu"])


def cpu_ms_per_frame(run: dict[str, Any]) -> float:
    """Node CPU above idle per frame received (the runs may not receive the same number of frames)."""
    received_hz = run["offered_hz"] * run["received"] / max(run["offered"], 1)
    return 10.0 * frames_cpu(run) / max(received_hz, 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role")
    publish = sub.add_parser("publish", help="(internal) one camera publisher")
    publish.add_argument("--topic", required=True)
    publish.add_argument("--width", type=int, required=True)
    publish.add_argument("--height", type=int, required=True)
    publish.add_argument("--rate", type=float, required=True)
    publish.add_argument("--qos", choices=("best_effort", "reliable"), default="best_effort")
    node = sub.add_parser("node", help="(internal) the encoder node, or a reference process")
    node.add_argument("--subscription", choices=SUBSCRIPTIONS + REFERENCES, required=True)
    node.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[])
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time per run (default 5)")
    parser.add_argument("--out", type=Path, default=OUT, help="work folder (shards, timing profiles)")
    parser.add_argument("--parts", default="a,b,c",
                        help="which parts to run, comma-separated (default a,b,c): a = Cyclone delivery and CPU, "
                             "b = latency, c = Cyclone DDS and Fast DDS side by side")
    args, _ = parser.parse_known_args(argv)  # run_all.py passes its own arguments to every benchmark
    if args.role == "publish":
        return run_publisher(args)
    if args.role == "node":
        return run_reference(args) if args.subscription in REFERENCES else run_node(args)
    return orchestrate(args)


def orchestrate(args: argparse.Namespace) -> int:
    try:
        import rclpy
    except ImportError:
        print("SKIP ros_bench: no ROS 2 in this environment (source /opt/ros/<distro>/setup.bash; `make bench` "
              "sources its ROS_TREE, ../shared/ros2-humble, when it is there)")
        return 0
    # A domain no other run here holds (the tests, a demo, another clone's benchmark), held until this process ends.
    domain, _domain_lock = ros_workspace.claim_domain_id()
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ.update(ros_environment(None))  # the observer (this process) too: loopback, Cyclone, our domain
    args.out.mkdir(parents=True, exist_ok=True)
    shards, slow, fast = prepare(args.out)
    from rk_siglip_ros.node.dds import REQUESTED_RECEIVE_BUFFER, kernel_receive_buffer_limit

    rmem_max = kernel_receive_buffer_limit()
    print(f"  kernel net.core.rmem_max: {'unknown' if rmem_max is None else f'{rmem_max / 2**20:.1f} MB'} (the "
          f"shipped config asks for {REQUESTED_RECEIVE_BUFFER / 2**20:.0f} MB and gets at most this, doubled by "
          "Linux for its bookkeeping)", flush=True)
    rclpy.init()
    observer = Observer()
    started = time.perf_counter()
    try:
        parts = {part.strip() for part in args.parts.split(",")}
        if "a" in parts:
            results = []
            for size in SIZES:
                for pair, dds in [("subscription", dds) for dds in DDS_CONFIGS] + [("malloc", "shipped"),
                                                                                    ("floor", "shipped")]:
                    print(f"  run: {size}, {dds} DDS config, {' and '.join(LABELS[k] for k in PAIRS[pair])} side by "
                          "side ...", flush=True)
                    results += delivery_runs(observer, pair=pair, size=size, dds=dds, shards=shards, profile=slow,
                                             seconds=args.seconds)
            print_delivery(results)
        if "b" in parts:
            print("  run: latency ...", flush=True)
            samples = latency_runs(observer, shards, fast, seconds=max(args.seconds * 2, 8.0))
            print_latency(samples)
        if "c" in parts:
            fastdds = fastdds_rmw()
            if fastdds is None:
                print("\n(c) SKIP: this ROS 2 has no Fast DDS RMW (rmw_fastrtps_cpp / rmw_fastrtps_dynamic_cpp)")
            else:
                print_middlewares(middleware_runs(observer, fastdds=fastdds, shards=shards, slow=slow, fast=fast,
                                                  seconds=args.seconds), fastdds)
        print(f"\nros_bench: {time.perf_counter() - started:.0f} s")
    finally:
        observer.close()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
