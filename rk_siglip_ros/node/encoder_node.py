"""`encoder_node`: the rclpy adapter. Camera topics in, ``/siglip/embeddings`` (sensor_msgs/Image, 32FC1) out, and
with ``labels`` set ``/siglip/labels`` (vision_msgs/Classification).

The only module that imports rclpy and ROS message packages. It declares the parameters listed in
:mod:`rk_siglip_ros.node.config`, subscribes, publishes and reports diagnostics; everything else (frame policy,
conversions, encoder, stats) lives in ROS-free modules, driven through
:class:`~rk_siglip_ros.node.core.EncoderNodeCore`.
"""

from __future__ import annotations

import array
import sys
from typing import Any

from rk_siglip_ros.backends.base import BackendError
from rk_siglip_ros.manifest import ManifestError
from rk_siglip_ros.node.config import (
    COMPRESSED_TYPE,
    NODE_NAME,
    PACKAGE,
    PARAMETERS,
    ConfigError,
    NodeConfig,
    message_type_for,
    validate,
)
from rk_siglip_ros.node.core import EncoderNodeCore

EXIT_USAGE = 2  # bad parameters / setup, as rk_siglip_ros.cli.common.EXIT_USAGE (not imported: it pulls in rosbags)
NOT_SOURCED = "encoder_node: ROS 2 is not sourced: source /opt/ros/<distro>/setup.bash"
MISSING_ROS_PACKAGE: str | None = None

try:  # Off-ROS the module still imports (for tests and tools); main() then explains in one line.
    import rclpy
    from rclpy.node import Node
except ImportError:
    rclpy = None
    Node = object

if rclpy is not None:
    try:
        import diagnostic_updater
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        from diagnostic_msgs.msg import DiagnosticStatus
        from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
        from rclpy.executors import ExternalShutdownException
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image
        from vision_msgs.msg import Classification, ObjectHypothesis
    except ImportError as missing:
        MISSING_ROS_PACKAGE = missing.name or str(missing)

RELIABLE_DEPTH = 10


class EncoderNode(Node):
    """Parameters -> EncoderNodeCore; subscriptions feed it, its callbacks publish."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        config = validate(self._declare_parameters(), share_dir=_share_dir())
        logger = self.get_logger()
        self._service = EncoderNodeCore(config, open_publisher=self._open_publisher, now_s=self._clock_seconds,
                                        warn=logger.warning, error=logger.error,
                                        open_labels_publisher=self._open_labels_publisher, info=logger.info)
        try:
            self._camera_subscriptions = [self._subscribe(topic, config) for topic in config.image_topics]
            self.add_on_set_parameters_callback(self._set_parameters_hook)
            self._updater = diagnostic_updater.Updater(self, period=config.diagnostic_period)
            self._updater.setHardwareID(f"rk3588-npu/{config.backend}")
            self._updater.add("siglip encoder", self._diagnose)
        except BaseException:
            self._service.close(drain=False)  # release the NPU before the error propagates
            raise
        logger.info(f"encoding {', '.join(config.image_topics)} -> {config.output_topic} "
                    f"({self._service.embedding_dim}-d, shards {config.shards}, backend {config.backend}, "
                    f"mode {config.mode}, cores {list(config.cores)})")
        if config.labels:
            logger.info(self._labels_line())

    def close(self) -> None:
        """Finish or drop the frames in flight and release the NPU; safe to call twice."""
        service = getattr(self, "_service", None)
        if service is not None:
            # After an external shutdown (Jazzy's SIGINT handling) publishing fails: drop instead of draining.
            service.close(drain=rclpy.ok())

    # ------------------------------------------------------------------------------------------------ ROS glue

    def _declare_parameters(self) -> dict[str, Any]:
        values = {}
        for name, spec in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
            values[name] = self.declare_parameter(name, spec.default, descriptor).value
        return values

    def _subscribe(self, topic: str, config: NodeConfig) -> Any:
        message_type = CompressedImage if message_type_for(topic) == COMPRESSED_TYPE else Image
        qos = (qos_profile_sensor_data if config.qos == "sensor_data"
               else QoSProfile(depth=RELIABLE_DEPTH, reliability=ReliabilityPolicy.RELIABLE))
        return self.create_subscription(message_type, topic, lambda msg: self._service.offer(topic, msg), qos)

    def _open_publisher(self, topic: str) -> Any:
        publisher = self.create_publisher(Image, topic, RELIABLE_DEPTH)

        def publish(header: Any, fields: dict[str, Any]) -> None:
            msg = Image()
            msg.header = header
            msg.height, msg.width, msg.step = fields["height"], fields["width"], fields["step"]
            msg.encoding, msg.is_bigendian = fields["encoding"], fields["is_bigendian"]
            msg.data = array.array("B", fields["data"].tobytes())  # array('B') skips rclpy's per-byte checks
            publisher.publish(msg)

        return publish

    def _open_labels_publisher(self, topic: str) -> Any:
        publisher = self.create_publisher(Classification, topic, RELIABLE_DEPTH)

        def publish(header: Any, results: list[tuple[str, float]]) -> None:
            msg = Classification()
            msg.header = header
            msg.results = [ObjectHypothesis(class_id=label, score=score) for label, score in results]
            publisher.publish(msg)

        return publish

    def _labels_line(self) -> str:
        labels = self._service.labels
        if labels.changing:
            return f"labels: embedding the new labels in the background; {labels.count} in use until then"
        if not labels.count:
            return "labels off"
        return (f"{labels.count} labels -> {self._service.config.labels_topic} (vision_msgs/Classification, top "
                f"{labels.top_k})")

    def _clock_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _diagnose(self, stat: Any) -> Any:
        report = self._service.diagnostics()
        levels = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR}
        stat.summary(levels[report.level], report.message)
        for key, value in report.values:
            stat.add(key, value)
        return stat

    def _set_parameters_hook(self, parameters: list[Any]) -> Any:
        for parameter in parameters:
            if parameter.name == "max_rate_hz":
                try:
                    self._service.set_max_rate(parameter.value)  # config.check_max_rate, as at start
                except ValueError as error:
                    return SetParametersResult(successful=False, reason=str(error))
            elif parameter.name in ("labels", "labels_top_k"):
                try:  # labels: checked here, embedded in the background (minutes for 1000 labels on a CPU)
                    if parameter.name == "labels":
                        self._service.set_labels(parameter.value, background=True)
                    else:
                        self._service.set_labels_top_k(parameter.value)
                except ValueError as error:
                    return SetParametersResult(successful=False, reason=str(error))
                self.get_logger().info(self._labels_line())
        return SetParametersResult(successful=True)


def _share_dir() -> str | None:
    try:
        return get_package_share_directory(PACKAGE)
    except PackageNotFoundError:  # run from a source tree without colcon: `shards` must then be set
        return None


def main(args: list[str] | None = None) -> int:
    """Run the node. Exit status as every rk_siglip_ros tool (cli.common), except that a shutdown by Ctrl-C or the
    launch system is a normal end (0): 0 stopped cleanly, 1 failed while running, 2 bad parameters, shard set,
    backend or ROS environment."""
    if rclpy is None:
        print(NOT_SOURCED, file=sys.stderr)
        return EXIT_USAGE
    if MISSING_ROS_PACKAGE is not None:
        print(f"encoder_node: ROS 2 package {MISSING_ROS_PACKAGE!r} is missing: "
              f"sudo apt install ros-$ROS_DISTRO-{MISSING_ROS_PACKAGE.split('.')[0].replace('_', '-')}",
              file=sys.stderr)
        return EXIT_USAGE
    rclpy.init(args=args)
    node = None
    status = 0
    try:
        node = EncoderNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C / ros2 launch shutdown: fall through to the clean-up
    except (ConfigError, ManifestError, BackendError) as error:  # a one-line reason, not a traceback
        rclpy.logging.get_logger(NODE_NAME).fatal(str(error))
        status = EXIT_USAGE
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
