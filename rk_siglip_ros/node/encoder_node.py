"""`encoder_node`: the rclpy adapter. Camera topics in, ``siglip/embeddings`` (sensor_msgs/Image, 32FC1) out, and
with ``labels`` set ``siglip/labels`` (vision_msgs/Classification); relative names, so /siglip/... with no namespace.
``encoder_node --managed`` is the same node as a lifecycle node (:class:`ManagedEncoderNode`).

The only module that imports rclpy and ROS message packages. It declares the parameters listed in
:mod:`rk_siglip_ros.node.config`, subscribes, publishes and reports diagnostics; everything else (frame policy,
conversions, encoder, stats) lives in ROS-free modules, driven through
:class:`~rk_siglip_ros.node.service.EncoderService`.
"""

from __future__ import annotations

import array
import dataclasses
import os
import signal
import sys
import threading
from typing import Any

from rk_siglip_ros.errors import EXIT_USAGE, ExplainedError, one_line
from rk_siglip_ros.messages.vision_info import embedding_kind, vision_info_fields, vision_info_topic
from rk_siglip_ros.model_identity import ModelIdentity
from rk_siglip_ros.node.camera_cdr import camera_deserializer
from rk_siglip_ros.node.config import (
    COMPRESSED_TYPE,
    MANAGED_FLAG,
    NODE_NAME,
    PACKAGE,
    PARAMETERS,
    ConfigError,
    NodeConfig,
    check_labels,
    check_max_rate,
    check_top_k,
    message_type_for,
    validate,
)
from rk_siglip_ros.node.dds import NODE_QOS, RMW_IMPLEMENTATION, node_qos
from rk_siglip_ros.node.frame_memory import keep_frame_buffers
from rk_siglip_ros.node.log_bridge import forward_library_logs
from rk_siglip_ros.node.service import EncoderService
from rk_siglip_ros.node.stats import TopicPublishers

NOT_SOURCED = "encoder_node: ROS 2 is not sourced: source /opt/ros/<distro>/setup.bash"
MISSING_ROS_PACKAGE: str | None = None

try:  # Off-ROS the module still imports (for tests and tools); main() then explains in one line.
    import rclpy
    from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
    from rclpy.node import Node
except ImportError:
    rclpy = None
    Node = LifecycleNode = object
    LifecycleState = TransitionCallbackReturn = Any

if rclpy is not None:
    try:
        import diagnostic_updater
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        from diagnostic_msgs.msg import DiagnosticStatus
        from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
        from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
        from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
        from rclpy.qos import (
            DurabilityPolicy,
            QoSProfile,
            ReliabilityPolicy,
            qos_policy_name_from_kind,
            qos_profile_sensor_data,
        )
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import Header
        from vision_msgs.msg import Classification, ObjectHypothesis, VisionInfo
    except ImportError as missing:
        MISSING_ROS_PACKAGE = missing.name or str(missing)
    try:  # Iron and later; Humble has it as rclpy.qos_event
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:
        from rclpy.qos_event import SubscriptionEventCallbacks

RELIABLE_DEPTH = 10
SIGNAL_POLL_S = 0.1  # how soon spinning notices a stop request
# What a parameter of each default's type must be, for the one-line error when rclpy refuses a value's type.
TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}


class _EncoderParts:
    """What both node kinds share: parameters, the service (encoder, publishers, dispatcher), camera subscriptions
    and diagnostics, each opened and released on its own so a lifecycle node can do it transition by transition.

    A mixin of the node class (Node or LifecycleNode): ``self`` is the rclpy node. ``_output_publisher`` is the one
    thing the two kinds do differently (a lifecycle node's publishers publish only while it is active)."""

    _service: Any = None
    _stop_forwarding_logs: Any = None
    _updater: Any = None
    _vision_info_publisher: Any = None

    def _set_up(self, serialized: bool) -> None:
        """Declare the parameters (a value of the wrong type: ConfigError) and the run-time change hook."""
        self._serialized = serialized
        self._camera_subscriptions: list[Any] = []
        self._output_publishers: list[Any] = []
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._set_parameters_hook)

    def _read_config(self) -> NodeConfig:
        """The parameters as they are now, checked (ConfigError with the one-line reason)."""
        config = validate({name: self.get_parameter(name).value for name in PARAMETERS}, share_dir=_share_dir())
        # qos: auto becomes this middleware's profile here, so everything downstream names the QoS in force.
        return dataclasses.replace(config, qos=node_qos(config.qos, rclpy.get_rmw_implementation_identifier()))

    def _open(self, config: NodeConfig) -> None:
        """Open the encoder (every NPU context), the output publishers and the diagnostics; on failure everything
        opened so far is released before the error propagates."""
        logger = self.get_logger()
        # The encoder's and scheduler's own lines (a core out of rotation, a stuck NPU call) into this node's log.
        self._stop_forwarding_logs = forward_library_logs(logger.info, logger.warning, logger.error)
        deserialize = ({topic: camera_deserializer(message_type_for(topic)) for topic in config.image_topics}
                       if self._serialized else None)
        try:
            self._service = EncoderService(config, open_publisher=self._open_publisher, now_s=self._clock_seconds,
                                            warn=logger.warning, error=logger.error,
                                            open_labels_publisher=self._open_labels_publisher, info=logger.info,
                                            deserialize=deserialize,
                                            environ=_dds_facts(rclpy.get_rmw_implementation_identifier(), config.qos))
            self._publish_vision_info(config)
            self._updater = diagnostic_updater.Updater(_UpdaterHost(self), period=config.diagnostic_period)
            self._updater.setHardwareID(self._service.hardware_id)
            self._updater.add("siglip encoder", self._diagnose)
        except BaseException:
            self._release(drain=False)  # release the NPU before the error propagates
            raise

    def _release(self, drain: bool) -> None:
        """Finish (``drain``) or drop the frames in flight, release the NPU, remove the publishers and diagnostics;
        safe to call twice."""
        self._unsubscribe_cameras()
        service, self._service = self._service, None
        if service is not None:
            summary = service.close(drain=drain)
            if summary is not None:
                self.get_logger().info(summary.line())
        vision_info, self._vision_info_publisher = self._vision_info_publisher, None
        if vision_info is not None:
            self.destroy_publisher(vision_info)  # a late subscriber must not learn of a model no longer loaded
        updater, self._updater = self._updater, None
        if updater is not None:
            self.destroy_timer(updater.timer)
            self.destroy_publisher(updater.publisher)
        for publisher in self._output_publishers:
            self._destroy_output_publisher(publisher)
        self._output_publishers.clear()
        stop_forwarding_logs, self._stop_forwarding_logs = self._stop_forwarding_logs, None
        if stop_forwarding_logs is not None:
            stop_forwarding_logs()

    def _publish_vision_info(self, config: NodeConfig) -> None:
        """The model identity, latched beside the embeddings (siglip/vision_info): published once, every subscriber
        that comes later still gets it (transient_local). A plain publisher even in a lifecycle node: while the
        node is configured, the identity holds whether it is active or not."""
        manifest = self._service.encoder.manifest
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._vision_info_publisher = self.create_publisher(VisionInfo, vision_info_topic(config.output_topic),
                                                            latched)
        msg = VisionInfo(**vision_info_fields(ModelIdentity.of(manifest), embedding_kind(manifest),
                                              str(config.shards.resolve())))
        msg.header.stamp = self.get_clock().now().to_msg()
        self._vision_info_publisher.publish(msg)

    def _subscribe_cameras(self) -> None:
        config = self._service.config
        self._camera_subscriptions = [self._subscribe(topic, config) for topic in config.image_topics]

    def _unsubscribe_cameras(self) -> None:
        for subscription in self._camera_subscriptions:
            self.destroy_subscription(subscription)
        self._camera_subscriptions = []

    def _encoding_line(self) -> str:
        config, service = self._service.config, self._service
        cameras = ", ".join(self.resolve_topic_name(topic) for topic in config.image_topics)
        return (f"encoding {cameras} -> {self.resolve_topic_name(config.output_topic)} ({service.embedding_dim}-d, "
                f"shards {config.shards}, backend {service.backend_name}"
                f"{' (auto)' if config.backend == 'auto' else ''}, mode {config.mode}, cores {list(config.cores)})")

    # ------------------------------------------------------------------------------------------------ ROS glue

    def _declare_parameters(self) -> None:
        """Declare every parameter; a value of the wrong type becomes a ConfigError (one line), not a traceback.

        Float parameters are dynamically typed, so an integer (``max_rate_hz: 5``) is accepted in params files, on
        the command line and at run time; config.check_number is their type check."""
        for name, spec in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only,
                                             dynamic_typing=spec.number)
            try:
                self.declare_parameter(name, spec.default, descriptor)
            except (InvalidParameterTypeException, InvalidParameterValueException) as error:
                raise ConfigError(f"parameter {name!r} must be {_type_name(spec.default)}: {error}") from None

    def _subscribe(self, topic: str, config: NodeConfig) -> Any:
        qos = (qos_profile_sensor_data if config.qos == "sensor_data"
               else QoSProfile(depth=RELIABLE_DEPTH, reliability=ReliabilityPolicy.RELIABLE))
        service = self._service
        events = SubscriptionEventCallbacks(incompatible_qos=lambda event: service.incompatible_qos(
            topic, qos_policy_name_from_kind(event.last_policy_kind)))
        return self.create_subscription(_message_class(topic), topic, lambda msg: service.offer(topic, msg),
                                        qos, event_callbacks=events, raw=self._serialized)

    def _camera_publishers(self) -> dict[str, TopicPublishers]:
        """Who publishes on each camera topic, from the ROS graph (publishers of another type included: DDS never
        matches them, and that is worth saying)."""
        publishers = {}
        for topic in self._service.config.image_topics:
            infos = self.get_publishers_info_by_topic(self.resolve_topic_name(topic))
            other = tuple(sorted({info.topic_type for info in infos} - {message_type_for(topic)}))
            publishers[topic] = TopicPublishers(count=len(infos), other_types=other)
        return publishers

    def _output_publisher(self, message_type: type, topic: str) -> Any:
        """A publisher of the node's per-frame outputs (a lifecycle node's: only while active)."""
        return self.create_publisher(message_type, topic, RELIABLE_DEPTH)

    def _destroy_output_publisher(self, publisher: Any) -> None:
        self.destroy_publisher(publisher)

    def _open_publisher(self, topic: str) -> Any:
        publisher = self._output_publisher(Image, topic)
        self._output_publishers.append(publisher)

        def publish(header: Any, fields: dict[str, Any]) -> None:
            msg = Image()
            msg.header = _ros_header(header)
            msg.height, msg.width, msg.step = fields["height"], fields["width"], fields["step"]
            msg.encoding, msg.is_bigendian = fields["encoding"], fields["is_bigendian"]
            msg.data = array.array("B", fields["data"].tobytes())  # array('B') skips rclpy's per-byte checks
            publisher.publish(msg)

        return publish

    def _open_labels_publisher(self, topic: str) -> Any:
        publisher = self._output_publisher(Classification, topic)
        self._output_publishers.append(publisher)

        def publish(header: Any, results: list[tuple[str, float]]) -> None:
            msg = Classification()
            msg.header = _ros_header(header)
            msg.results = [ObjectHypothesis(class_id=label, score=score) for label, score in results]
            publisher.publish(msg)

        return publish

    def _labels_line(self) -> str:
        labels = self._service.labels
        if labels.changing:
            return f"labels: embedding the new labels in the background; {labels.count} in use until then"
        if not labels.count:
            return "labels off"
        return (f"{labels.count} labels -> {self.resolve_topic_name(self._service.config.labels_topic)} "
                f"(vision_msgs/Classification, top {labels.top_k})")

    def _clock_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _diagnose(self, stat: Any) -> Any:
        report = self._service.diagnostics(publishers=self._camera_publishers())
        levels = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR}
        stat.summary(levels[report.level], report.message)
        for key, value in report.values:
            stat.add(key, value)
        return stat

    def _set_parameters_hook(self, parameters: list[Any]) -> Any:
        # The run-time changeable parameters; each change runs the check node start runs (ValueError: refused).
        # labels: checked here, embedded in the background (minutes for 1000 labels on a CPU).
        # Without a service (a lifecycle node not configured) a value is only checked: configure reads it.
        service = self._service
        if service is None:
            checks = {"max_rate_hz": check_max_rate, "labels": check_labels, "labels_top_k": check_top_k}
            for parameter in parameters:
                try:
                    checks.get(parameter.name, lambda value: value)(parameter.value)
                except ValueError as error:
                    return SetParametersResult(successful=False, reason=str(error))
            return SetParametersResult(successful=True)
        changes = {"max_rate_hz": service.set_max_rate,
                   "labels": lambda value: service.set_labels(value, background=True),
                   "labels_top_k": service.set_labels_top_k}
        for parameter in parameters:
            change = changes.get(parameter.name)
            if change is None:
                continue
            try:
                change(parameter.value)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
            if parameter.name != "max_rate_hz":
                self.get_logger().info(self._labels_line())
        return SetParametersResult(successful=True)


class EncoderNode(_EncoderParts, Node):
    """The default, unmanaged node: encodes from the moment it is built until it is closed."""

    def __init__(self, serialized: bool = True) -> None:
        """``serialized``: take camera messages as CDR bytes (``raw=True``) and deserialise only the frames that are
        encoded; False takes typed messages (every frame deserialised; the benchmark's baseline)."""
        Node.__init__(self, NODE_NAME)
        self._set_up(serialized)
        config = self._read_config()
        self._open(config)
        try:
            self._subscribe_cameras()
        except BaseException:
            self._release(drain=False)
            raise
        self.get_logger().info(self._encoding_line())
        if config.labels:
            self.get_logger().info(self._labels_line())

    def close(self) -> None:
        """Finish or drop the frames in flight and release the NPU; safe to call twice."""
        # main() keeps the context alive through a SIGINT, so this drains; after an external shutdown of the
        # context (someone else's rclpy.shutdown) publishing fails: drop instead.
        self._release(drain=rclpy.ok())


class ManagedEncoderNode(_EncoderParts, LifecycleNode):
    """``encoder_node --managed`` (launch: ``managed:=true``): a lifecycle node, driven through lifecycle_msgs.

    configure: read and check the parameters, load and check the shard set, open the NPU contexts and the
    publishers (a failure logs its one-line reason and leaves the node unconfigured); activate: subscribe to the
    cameras, publish; deactivate: unsubscribe, publish nothing (frames still in the encoder are not published);
    cleanup: release the NPU contexts and the encoder's memory; shutdown (from any state): the same, then ``stop``
    is set and main() exits."""

    def __init__(self, stop: threading.Event, serialized: bool = True) -> None:
        LifecycleNode.__init__(self, NODE_NAME)
        self._stop = stop
        self._set_up(serialized)
        self.get_logger().info(f"unconfigured: waiting for a lifecycle manager (or `ros2 lifecycle set "
                               f"{self.get_fully_qualified_name()} configure`, then activate)")

    def _output_publisher(self, message_type: type, topic: str) -> Any:
        return self.create_lifecycle_publisher(message_type, topic, RELIABLE_DEPTH)

    def _destroy_output_publisher(self, publisher: Any) -> None:
        self.destroy_lifecycle_publisher(publisher)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = self._read_config()
            self._open(config)
        except ExplainedError as error:  # a bad parameter, shard set or backend: the user's to fix, then configure
            self.get_logger().error(f"configure failed, still unconfigured: {one_line(error)}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"configured (inactive): {self._encoding_line()}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._subscribe_cameras()
        self.get_logger().info("active: subscribed to the cameras, publishing")
        if self._service.config.labels:
            self.get_logger().info(self._labels_line())
        return super().on_activate(state)  # enables the lifecycle publishers

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe_cameras()
        result = super().on_deactivate(state)  # disables the lifecycle publishers
        self.get_logger().info("inactive: no camera subscriptions, publishing nothing (NPU contexts kept)")
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release(drain=False)
        self.get_logger().info("unconfigured: NPU contexts and encoder released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release(drain=False)
        self._stop.set()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # A transition raised something unexpected (rclpy logs nothing): release all, back to unconfigured.
        self.get_logger().error(f"a transition from {state.label} failed unexpectedly; releasing the encoder")
        self._release(drain=False)
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop by signal: finish the frames in flight when active, release the NPU; safe to call twice."""
        self._release(drain=rclpy.ok() and bool(self._camera_subscriptions))


class _UpdaterHost:
    """The node as diagnostic_updater.Updater sees it. The Updater declares its own ``diagnostic_updater.period``
    parameter (statically typed: ``period: 2`` would be refused); the node has already declared it (validated, ints
    accepted), so here that declaration returns the node's parameter instead of declaring a second one."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def declare_parameter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._node.has_parameter(name):
            return self._node.get_parameter(name)
        return self._node.declare_parameter(name, *args, **kwargs)

    def get_name(self) -> str:
        """The Updater prefixes each status with this: the namespace too, so instances in different namespaces
        report apart on the one /diagnostics topic ("robot1/encoder_node: siglip encoder")."""
        return self._node.get_fully_qualified_name().lstrip("/")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


def _type_name(default: Any) -> str:
    if isinstance(default, list):
        return f"a list of {TYPE_NAMES[type(default[0])].split(' ', 1)[1]}s" if default else "a list"
    return TYPE_NAMES[type(default)]


def _stop_on_signals() -> threading.Event:
    """SIGINT and SIGTERM (Ctrl-C, ros2 launch's shutdown) set the returned event instead of raising.

    rclpy's own signal handlers are off (see main): Humble's would shut the context down before the node could
    publish the frames still in the encoder. Installed before the node is built, so a Ctrl-C during start-up never
    interrupts it half-way (which could leave encoder threads running and the process hanging): the node finishes
    starting, then stops. Ctrl-C under ros2 launch arrives twice (from the terminal and forwarded by launch), so a
    repeated SIGINT changes nothing; a SIGTERM while stopping (launch escalates to it after its sigterm_timeout)
    raises KeyboardInterrupt to cut the drain short.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGTERM:
            raise KeyboardInterrupt
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    return stop


def _spin_until(node: Node, stop: threading.Event) -> None:
    """Spin until ``stop`` is set or the context is shut down from elsewhere."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)
    finally:
        executor.remove_node(node)


def _ros_header(header: Any) -> Any:
    """The source frame's header as a std_msgs/Header (camera frames are deserialised by rosbags, see camera_cdr)."""
    ros_header = Header(frame_id=str(header.frame_id))
    ros_header.stamp.sec, ros_header.stamp.nanosec = int(header.stamp.sec), int(header.stamp.nanosec)
    return ros_header


def _message_class(topic: str) -> type:
    return CompressedImage if message_type_for(topic) == COMPRESSED_TYPE else Image


def _dds_facts(rmw: str, qos: str) -> dict[str, str]:
    """This process's environment plus the middleware rclpy actually loaded (RMW_IMPLEMENTATION may be unset: the
    distro's default, which the DDS hints must not guess) and the subscription QoS in force."""
    return {**os.environ, RMW_IMPLEMENTATION: rmw, NODE_QOS: qos}


def _share_dir() -> str | None:
    try:
        return get_package_share_directory(PACKAGE)
    except PackageNotFoundError:  # run from a source tree without colcon: `shards` must then be set
        return None


def _is_managed(arguments: list[str]) -> bool:
    """The node's own command line (ROS arguments removed): nothing, or --managed; ValueError for anything else."""
    unknown = [argument for argument in arguments if argument != MANAGED_FLAG]
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r}; the only one is {MANAGED_FLAG} (a lifecycle node); "
                         f"parameters go after --ros-args: -p name:=value")
    return bool(arguments)


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
    try:
        managed = _is_managed(rclpy.utilities.remove_ros_args(sys.argv if args is None else args)[1:])
    except ValueError as error:
        print(f"encoder_node: {error}", file=sys.stderr)
        return EXIT_USAGE
    memory_as_intended, memory = keep_frame_buffers()  # before DDS starts: its receive thread allocates each sample
    # No rclpy signal handlers: the context must outlive Ctrl-C so the frames in flight can still be published.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    logger = rclpy.logging.get_logger(NODE_NAME)
    (logger.debug if memory_as_intended else logger.info)(memory)
    stop = _stop_on_signals()
    node = None
    status = 0
    try:
        node = ManagedEncoderNode(stop) if managed else EncoderNode()
        _spin_until(node, stop)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # SIGTERM twice, or an external shutdown: fall through to the clean-up
    except ExplainedError as error:  # a one-line reason, not a traceback
        logger.fatal(one_line(error))
        status = error.exit_status
    finally:
        if node is not None:
            try:
                node.close()
            except KeyboardInterrupt:
                pass  # SIGTERM while draining: stop waiting; the encoder's close still releases the NPU
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)  # the last clean-up steps are quick: let them finish
            node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
