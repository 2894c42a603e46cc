"""The encoder node's parameters: names, defaults, descriptions and validation, ROS-free.

``encoder_node.py`` declares every entry of :data:`PARAMETERS` with a ParameterDescriptor, reads the values and hands
them to :func:`validate`, which returns a :class:`NodeConfig` or raises :class:`ConfigError` with a message that says
what to do. The launch file turns its arguments into parameter overrides with :func:`launch_overrides`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rk_siglip_ros.errors import UserError
from rk_siglip_ros.manifest import MANIFEST_NAME
from rk_siglip_ros.messages.camera_frames import IMAGE_MSG_TYPES
from rk_siglip_ros.messages.image_header import DEFAULT_MAX_IMAGE_PIXELS
from rk_siglip_ros.runtime.backends import BACKENDS
from rk_siglip_ros.runtime.backends.base import NPU_CORES
from rk_siglip_ros.runtime.scheduler import MODES

NODE_NAME = "encoder_node"
PACKAGE = "rk_siglip_ros"
# auto: reliable on Fast DDS, sensor_data elsewhere (node/dds.py node_qos, measured: benchmarks/RESULTS.md).
QOS_PROFILES = ("auto", "sensor_data", "reliable")
COMPRESSED_SUFFIX = "/compressed"
IMAGE_TYPE, COMPRESSED_TYPE = IMAGE_MSG_TYPES
BUILD_HINT = "build_shards --model google/siglip-base-patch16-512 --out {path}"
DIAGNOSTIC_PERIOD = "diagnostic_updater.period"
# encoder.launch.py's arguments that map onto node parameters (params_file is the parameter file itself).
LAUNCH_ARGUMENTS = ("shards", "image_topics", "backend", "mode")
# The node's outputs are relative names: with no namespace they resolve to /siglip/..., under a namespace (launch
# argument `namespace`, PushRosNamespace, --ros-args -r __ns:=...) they move with it, and remaps apply to them.
# Camera topics are used as given: "/camera/image_raw" stays absolute, "camera/image_raw" follows the namespace.
EMBEDDINGS_TOPIC = "siglip/embeddings"
PATCH_EMBEDDINGS_TOPIC = "siglip/patch_embeddings"
LABELS_TOPIC = "siglip/labels"
# `encoder_node --managed` (launch: managed:=true) runs it as a lifecycle node.
MANAGED_FLAG = "--managed"


@dataclass(frozen=True)
class Parameter:
    """A node parameter. ``number``: a float that also takes integers (people write ``max_rate_hz: 5``); the node
    declares it dynamically typed and :func:`check_number` (here, at start and at run time) is its type check."""

    default: Any
    description: str
    read_only: bool = True
    number: bool = False


# name -> declaration. The order is the order of the docs table.
PARAMETERS: dict[str, Parameter] = {
    "shards": Parameter("", "Shard set folder (manifest.json + shards); empty = <share>/rk_siglip_ros/shards/default"),
    "backend": Parameter("auto", f"Inference backend: {'|'.join(BACKENDS)} (auto = rknnlite on a board, else "
                                 "onnxruntime)"),
    "mode": Parameter("pipeline", f"How shards use the NPU cores: {'|'.join(MODES)}"),
    "cores": Parameter(list(NPU_CORES), "NPU cores to use (RK3588: 0, 1, 2)"),
    "timing_profile": Parameter("", "sim backend only: timing profile name or JSON path; empty = the default"),
    "image_topics": Parameter(["/camera/image_raw"], "Camera topics; sensor_msgs/Image, or CompressedImage for "
                                                      "topics ending in /compressed"),
    "qos": Parameter("auto", f"Subscription QoS: {'|'.join(QOS_PROFILES)} (auto = reliable on Fast DDS, "
                             "sensor_data elsewhere; reliable = depth 10)"),
    "max_rate_hz": Parameter(0.0, "Per-camera encode rate limit in Hz; 0 = as fast as the encoder allows",
                             read_only=False, number=True),
    "max_image_pixels": Parameter(DEFAULT_MAX_IMAGE_PIXELS, "Frames declaring more pixels are refused before "
                                                            "decoding (bad frame); 0 = no limit"),
    "output_topic": Parameter(EMBEDDINGS_TOPIC, "Embedding topic (sensor_msgs/Image, 32FC1, 1 x dim); relative "
                                                "names follow the node's namespace"),
    "publish_patch_tokens": Parameter(False, "Also publish the patch tokens (tokens x width, 32FC1)"),
    "patch_tokens_topic": Parameter(PATCH_EMBEDDINGS_TOPIC, "Topic for the patch tokens"),
    # diagnostic_updater's own name for its period (every node using it has this parameter): one setting, not two.
    DIAGNOSTIC_PERIOD: Parameter(1.0, "Seconds between /diagnostics updates", number=True),
    # [""] rather than []: a ROS 2 parameter needs a typed default, and an empty list has no element type.
    "labels": Parameter([""], "Open-vocabulary labels scored on every frame (needs a shard set built with --text); "
                              "[] or [''] = off. Changing them runs the text tower once", read_only=False),
    "labels_top_k": Parameter(5, "How many of the most probable labels each Classification carries",
                              read_only=False),
    "labels_topic": Parameter(LABELS_TOPIC, "Label topic (vision_msgs/Classification, header = the frame's)"),
}


class ConfigError(UserError, ValueError):
    """A parameter value the node cannot start with; the message says which parameter and what to do."""


@dataclass(frozen=True)
class NodeConfig:
    shards: Path
    backend: str
    mode: str
    cores: tuple[int, ...]
    timing_profile: str | None
    image_topics: tuple[str, ...]
    qos: str
    max_rate_hz: float
    output_topic: str
    publish_patch_tokens: bool
    patch_tokens_topic: str
    diagnostic_period: float
    max_image_pixels: int
    labels: tuple[str, ...]
    labels_top_k: int
    labels_topic: str


def default_shards_dir(share_dir: str | Path) -> Path:
    """Where colcon installs the shard set the node uses when ``shards`` is empty."""
    return Path(share_dir) / "shards" / "default"


def message_type_for(topic: str) -> str:
    """``sensor_msgs/msg/CompressedImage`` for image_transport's ``.../compressed`` topics, else ``Image``."""
    return COMPRESSED_TYPE if topic.rstrip("/").endswith(COMPRESSED_SUFFIX) else IMAGE_TYPE


def parse_topic_list(text: str) -> list[str]:
    """Topics from a launch argument: "[/a, /b]", "/a,/b", "/a /b" or "['/a', '/b']" all give ["/a", "/b"]."""
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    topics = [part.strip().strip("'\"").strip() for part in re.split(r"[,\s]+", inner)]
    return [topic for topic in topics if topic]


def launch_overrides(arguments: Mapping[str, str]) -> dict[str, Any]:
    """The parameters the launch arguments set over ``params_file``: only the non-empty ones.

    An empty argument leaves the params file's value; an empty ``shards`` in both then means the installed
    default (see :func:`validate`).
    """
    overrides: dict[str, Any] = {}
    for name in LAUNCH_ARGUMENTS:
        text = str(arguments.get(name, "")).strip()
        if name == "image_topics":
            topics = parse_topic_list(text)
            if topics:
                overrides[name] = topics
        elif text:
            overrides[name] = text
    return overrides


def check_number(name: str, value: Any, minimum: float, allow_minimum: bool, meaning: str = "") -> float:
    """A float parameter's value as a float: an int or a float (not a bool, not a string), finite, above ``minimum``
    (or equal to it with ``allow_minimum``); else ConfigError naming the parameter."""
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    in_range = number >= minimum if allow_minimum else number > minimum
    if not (in_range and math.isfinite(number)):  # NaN fails both comparisons
        bound = f"{'>=' if allow_minimum else '>'} {minimum:g}"
        raise ConfigError(f"{name} must be a finite number {bound}{meaning}, got {value!r}")
    return number


def check_max_rate(value: Any) -> float:
    """``max_rate_hz`` as a float: finite and >= 0 (0 = unlimited). Checked at start and on every run-time change."""
    return check_number("max_rate_hz", value, 0.0, allow_minimum=True, meaning=" (0 = unlimited)")


def check_labels(value: Any) -> tuple[str, ...]:
    """``labels`` as a tuple: () for off ([] or [""]), else distinct non-empty texts, at most MAX_LABELS. Checked at
    start and on every run-time change."""
    from rk_siglip_ros.text import TextError, check_texts  # numpy only: the text tower is not loaded here

    labels = [] if value is None else list(value)
    if labels in ([], [""]):
        return ()
    try:
        return tuple(check_texts(labels, "labels"))
    except TextError as error:
        raise ConfigError(str(error)) from None


def check_top_k(value: Any) -> int:
    """``labels_top_k``: an integer >= 1 (more than the label count simply gives them all)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"labels_top_k must be an integer >= 1, got {value!r}")
    return int(value)


def check_shards_dir(path: Path) -> Path:
    """The shard folder, or ConfigError telling the user how to build one."""
    if not (path / MANIFEST_NAME).is_file():
        what = "does not exist" if not path.exists() else f"has no {MANIFEST_NAME}"
        raise ConfigError(f"shards folder {path} {what}. Build a shard set with `{BUILD_HINT.format(path=path)}` "
                          f"(any SigLIP checkpoint or local folder works as --model), or point the node at one with "
                          f"the `shards` parameter (launch: shards:=<dir>)")
    return path


def validate(values: Mapping[str, Any], share_dir: str | Path | None = None) -> NodeConfig:
    """Check every parameter; ``share_dir`` resolves an empty ``shards`` to the installed default."""
    unknown = set(values) - set(PARAMETERS)
    if unknown:
        raise ConfigError(f"unknown parameters: {', '.join(sorted(unknown))}")
    merged = {name: values.get(name, spec.default) for name, spec in PARAMETERS.items()}

    backend = _choice(merged, "backend", BACKENDS)
    mode = _choice(merged, "mode", MODES)
    qos = _choice(merged, "qos", QOS_PROFILES)

    cores = tuple(int(core) for core in merged["cores"])
    if not cores or len(set(cores)) != len(cores) or not set(cores) <= set(NPU_CORES):
        raise ConfigError(f"cores must be distinct NPU core ids from {list(NPU_CORES)}, got {list(cores)}")

    topics = tuple(str(topic).strip() for topic in merged["image_topics"])
    if not topics or any(not topic for topic in topics):
        raise ConfigError(f"image_topics must list at least one topic name, got {list(merged['image_topics'])}")
    if len(set(topics)) != len(topics):
        raise ConfigError(f"image_topics lists a topic twice: {list(topics)}")

    max_rate = check_max_rate(merged["max_rate_hz"])
    max_pixels = _non_negative_int(merged, "max_image_pixels")
    period = check_number(DIAGNOSTIC_PERIOD, merged[DIAGNOSTIC_PERIOD], 0.0, allow_minimum=False, meaning=" seconds")
    labels = check_labels(merged["labels"])
    top_k = check_top_k(merged["labels_top_k"])
    for name in ("output_topic", "patch_tokens_topic", "labels_topic"):
        if not str(merged[name]).strip():
            raise ConfigError(f"{name} must not be empty")

    shards_text = str(merged["shards"]).strip()
    if shards_text:
        shards = Path(shards_text).expanduser()
    elif share_dir is not None:
        shards = default_shards_dir(share_dir)
    else:
        raise ConfigError("shards is empty and the package's share folder is unknown; set shards:=<dir>")
    check_shards_dir(shards)

    return NodeConfig(
        shards=shards, backend=backend, mode=mode, cores=cores,
        timing_profile=str(merged["timing_profile"]).strip() or None, image_topics=topics, qos=qos,
        max_rate_hz=max_rate, output_topic=str(merged["output_topic"]).strip(),
        publish_patch_tokens=bool(merged["publish_patch_tokens"]),
        patch_tokens_topic=str(merged["patch_tokens_topic"]).strip(), diagnostic_period=period,
        max_image_pixels=max_pixels,
        labels=labels, labels_top_k=top_k, labels_topic=str(merged["labels_topic"]).strip(),
    )


def _non_negative_int(values: Mapping[str, Any], name: str) -> int:
    value = values[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0 \
            or int(value) != value:
        raise ConfigError(f"{name} must be a whole number >= 0 (0 = no limit), got {value!r}")
    return int(value)


def _choice(values: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = str(values[name]).strip()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {'|'.join(choices)}, got {values[name]!r}")
    return value
