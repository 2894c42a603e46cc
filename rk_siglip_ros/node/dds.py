"""Which DDS configuration the encoder node runs with, for the middleware it runs on, and what the kernel allows it;
ROS-free.

Raw camera images are large (1920x1080 rgb8: 6.2 MB). What a middleware needs for them differs:

* Cyclone DDS (``rmw_cyclonedds_cpp``) sends a frame as ~100 UDP fragments even on one host. Its default socket
  receive buffer (the kernel's ``net.core.rmem_default``, ~208 KB) overflows within one such frame, and over best
  effort a frame with a lost fragment is lost whole: 3 x 30 Hz of 1080p reach a subscriber at 0 frames/s, silently.
  The package ships ``config/cyclonedds_large_images.xml`` (a 64 MB request that the kernel caps at
  ``net.core.rmem_max``, never a start-up failure) for ``CYCLONEDDS_URI``.
* Fast DDS (``rmw_fastrtps_cpp``, ``rmw_fastrtps_dynamic_cpp``: Humble's and Jazzy's default) moves frames between
  processes on one host through the publisher's shared-memory segment (512 KB by default): a large frame's fragments
  do not fit, and a best-effort reader loses the whole frame when one is overwritten. Measured with the node
  (benchmarks/ros_bench.py part c): 16-29 % of 640x480 and 14-17 % of 1080p frames reached a best-effort
  subscription. ``config/fastdds_large_images.xml`` (a 32 MB segment; ``*_localhost.xml`` when DDS is kept on the
  loopback) brought that to 100 % and 98 %, but only in the cameras' processes: in the node's alone it changed
  nothing, and with it in the node some of the test suite's daemon-less ``ros2 param`` calls and plain rclpy
  clients did not find the node on Humble. So on Fast DDS the node's ``qos: auto`` subscribes reliable (98-100 % at
  both sizes from reliable cameras without any file, :func:`node_qos`), ``large_images`` gives the node nothing, and
  the profile is for the camera drivers (:func:`large_images_file`, named by the node's hint).

The launch file (``dds_config:=large_images``, the default) gives the node's process the file of the middleware it
runs on through :func:`node_environment`; the node's diagnostics name that middleware's fix when frames go missing
(:func:`lost_frames_hint`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

from rk_siglip_ros.errors import UserError

CYCLONEDDS_URI = "CYCLONEDDS_URI"
# Fast DDS 2.x (Humble 2.6, Jazzy 2.14) reads one XML file of profiles from this variable.
FASTDDS_PROFILES_FILE = "FASTRTPS_DEFAULT_PROFILES_FILE"
RMW_IMPLEMENTATION = "RMW_IMPLEMENTATION"
# lost_frames_hint reads the node's resolved subscription QoS from its environ argument under this key.
NODE_QOS = "RK_SIGLIP_NODE_QOS"
AUTO = "auto"
LARGE_IMAGES = "large_images"
NONE = "none"
DDS_CONFIG_CHOICES = (LARGE_IMAGES, NONE)
CYCLONE = "cyclonedds"
FASTDDS = "fastdds"
# The shipped large-image file per middleware; Fast DDS's in two variants (see large_images_file), for the camera
# drivers' processes: the launch file gives the node only the files in NODE_FILES.
LARGE_IMAGES_FILES = {CYCLONE: "cyclonedds_large_images.xml", FASTDDS: "fastdds_large_images.xml"}
NODE_FILES = (CYCLONE,)
FASTDDS_LOCALHOST_FILE = "fastdds_large_images_localhost.xml"
LARGE_IMAGES_FILE = LARGE_IMAGES_FILES[CYCLONE]  # the Cyclone file (the name older callers know)
RMEM_MAX_PATH = Path("/proc/sys/net/core/rmem_max")
UDP_SNMP_PATH = Path("/proc/net/snmp")
# What the shipped Cyclone config asks for; a kernel limit below this is worth a hint when large frames go missing.
REQUESTED_RECEIVE_BUFFER = 64 * 1024 * 1024
SYSCTL_HINT = f"sudo sysctl -w net.core.rmem_max={REQUESTED_RECEIVE_BUFFER}"
# The XML root element that tells whose file a user's dds_config:=<path> is.
ROOT_ELEMENTS = {"CycloneDDS": CYCLONE, "profiles": FASTDDS, "dds": FASTDDS}


class DdsConfigError(UserError, ValueError):
    """A ``dds_config`` value that names no usable file; the message says what to pass instead."""


def middleware_family(rmw: str | None) -> str | None:
    """``cyclonedds`` / ``fastdds`` for an RMW implementation identifier (``rmw_cyclonedds_cpp``,
    ``rmw_fastrtps_cpp``, ``rmw_fastrtps_dynamic_cpp``), None for any other (Zenoh, Connext, ...) or unknown."""
    rmw = (rmw or "").strip()
    if "cyclonedds" in rmw:
        return CYCLONE
    if "fastrtps" in rmw or "fastdds" in rmw:
        return FASTDDS
    return None


def config_family(path: Path) -> str | None:
    """Whose XML ``path`` is, by its root element (``<CycloneDDS>``: Cyclone; ``<profiles>`` / ``<dds>``: Fast DDS);
    None when it is neither or not XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    return ROOT_ELEMENTS.get(root.tag.rsplit("}", 1)[-1])


def loopback_only(environ: Mapping[str, str]) -> bool:
    """Whether the environment keeps DDS on this host (ROS_LOCALHOST_ONLY=1, or Jazzy's
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST)."""
    return (environ.get("ROS_LOCALHOST_ONLY", "").strip() == "1"
            or environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").strip().upper() == "LOCALHOST")


def large_images_file(family: str, environ: Mapping[str, str]) -> str:
    """The shipped file name for ``family``: Fast DDS's profile replaces its built-in transports, so with DDS kept on
    the loopback the variant whose UDP transport is limited to 127.0.0.1 is the one that keeps it there."""
    if family == FASTDDS and loopback_only(environ):
        return FASTDDS_LOCALHOST_FILE
    return LARGE_IMAGES_FILES[family]


def dds_config_file(choice: str, config_dir: str | Path, rmw: str | None = "rmw_cyclonedds_cpp",
                    environ: Mapping[str, str] | None = None) -> Path | None:
    """The XML file for a ``dds_config`` launch argument on middleware ``rmw``: ``large_images`` (or empty) = the
    shipped file of that middleware in ``config_dir`` (None for a middleware the package has no file for),
    ``none`` = no file (the environment's own DDS settings only), anything else = the path of a Cyclone DDS or Fast DDS
    XML file."""
    choice = choice.strip()
    if choice == NONE:
        return None
    if choice in ("", LARGE_IMAGES):
        family = middleware_family(rmw)
        if family not in NODE_FILES:
            return None
        path = Path(config_dir) / large_images_file(family, environ or {})
    else:
        path = Path(choice).expanduser()
    if not path.is_file():
        raise DdsConfigError(f"dds_config:={choice or LARGE_IMAGES}: {path} is not a file; pass "
                             f"{' or '.join(DDS_CONFIG_CHOICES)}, or the path of a Cyclone DDS or Fast DDS XML file")
    if choice not in ("", LARGE_IMAGES) and config_family(path) is None:
        raise DdsConfigError(f"dds_config:={choice}: {path} is neither a Cyclone DDS (<CycloneDDS>) nor a Fast DDS "
                             "(<profiles>) XML file")
    return path.resolve()


def cyclonedds_uri(config_file: Path, inherited: str | None = None) -> str:
    """``CYCLONEDDS_URI`` with our file first and then whatever the environment already had: Cyclone applies a
    comma-separated list in order, later entries winning, so the user's own settings (peers, interfaces, ...) stay
    in force and only what they leave unset comes from our file."""
    ours = config_file.as_uri()
    inherited = (inherited or "").strip()
    return f"{ours},{inherited}" if inherited else ours


def node_environment(choice: str, config_dir: str | Path, environ: Mapping[str, str],
                     rmw: str | None = "rmw_cyclonedds_cpp") -> dict[str, str]:
    """The environment variables to add to the node process for ``dds_config:=choice`` on middleware ``rmw`` (empty
    for ``none``, and for a middleware without a shipped file).

    Fast DDS reads a single profiles file: one the user already exported in ``FASTRTPS_DEFAULT_PROFILES_FILE`` is
    theirs and stays (``large_images`` then adds nothing); a path given as ``dds_config`` replaces it."""
    config_file = dds_config_file(choice, config_dir, rmw, environ)
    if config_file is None:
        return {}
    family = config_family(config_file) if choice.strip() not in ("", LARGE_IMAGES) else middleware_family(rmw)
    if family == CYCLONE:
        return {CYCLONEDDS_URI: cyclonedds_uri(config_file, environ.get(CYCLONEDDS_URI))}
    if choice.strip() in ("", LARGE_IMAGES) and environ.get(FASTDDS_PROFILES_FILE, "").strip():
        return {}
    return {FASTDDS_PROFILES_FILE: str(config_file)}


def node_qos(choice: str, rmw: str | None) -> str:
    """The subscription QoS for the node's ``qos`` parameter on middleware ``rmw``.

    ``auto`` on Fast DDS, where a best-effort reader loses most large frames (see above): ``reliable``. A best-effort
    camera then does not match, and the node says so at once (a QoS warning naming the parameter) instead of losing
    frames silently. (Jazzy's "best available" reliability would match both, but it is resolved when the
    subscription is created, from the publishers discovered by then: a node started before its cameras gets
    reliable anyway, and a best-effort camera never matches, without a warning.) ``auto`` elsewhere:
    ``sensor_data`` (best effort, matches every camera; on Cyclone DDS with its large-image file it received all
    640x480 frames). ``sensor_data`` / ``reliable`` are used as given."""
    if choice != AUTO:
        return choice
    return "reliable" if middleware_family(rmw) == FASTDDS else "sensor_data"


def kernel_receive_buffer_limit(path: Path = RMEM_MAX_PATH) -> int | None:
    """``net.core.rmem_max`` in bytes: the most any socket receive buffer can get (None where unknown, e.g. not
    Linux)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def uses_large_image_config(environ: Mapping[str, str]) -> bool:
    """Whether ``CYCLONEDDS_URI`` names a config that raises the socket receive buffer (our file, or any file or
    inline XML that sets SocketReceiveBufferSize)."""
    uri = environ.get(CYCLONEDDS_URI, "")
    if LARGE_IMAGES_FILE in uri or "SocketReceiveBufferSize" in uri:
        return True
    for entry in uri.split(","):
        entry = entry.strip()
        path = Path(entry[len("file://"):] if entry.startswith("file://") else entry)
        try:
            if entry and path.is_file() and "SocketReceiveBufferSize" in path.read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def lost_frames_hint(environ: Mapping[str, str], rmem_max: int | None) -> str:
    """What to do when a camera topic has publishers of the right type and QoS but no frames arrive: the usual cause
    is raw images larger than what the middleware is set up for. ``environ["RMW_IMPLEMENTATION"]`` names the
    middleware the node runs on (the node puts rclpy's own answer there)."""
    rmw = environ.get(RMW_IMPLEMENTATION, "").strip()
    family = middleware_family(rmw)
    if family == FASTDDS:
        if environ.get(NODE_QOS, "").strip() != "reliable":
            return (f"{rmw} loses large raw images on the way to a best-effort subscription: give the camera driver "
                    "config/fastdds_large_images.xml (FASTRTPS_DEFAULT_PROFILES_FILE), or publish reliable and keep "
                    "qos: auto (reliable on Fast DDS) (docs/node.md: Middleware and large images)")
        return (f"{rmw} with a reliable subscription: check the publisher's side (ros2 topic info -v <topic>, "
                "ros2 topic hz <topic>)")
    if family is None:
        name = rmw or "this middleware"
        return (f"large raw images are lost when {name}'s receive buffers are too small: see its documentation for "
                f"large data, and raise net.core.rmem_max ({SYSCTL_HINT})")
    if not uses_large_image_config(environ):
        return ("large raw images overflow Cyclone DDS's default receive buffer: launch with "
                "dds_config:=large_images, or export CYCLONEDDS_URI=file://<share>/rk_siglip_ros/config/"
                f"{LARGE_IMAGES_FILE} (docs/node.md: Middleware and large images)")
    if rmem_max is not None and rmem_max < REQUESTED_RECEIVE_BUFFER:
        return (f"the DDS config for large images is in use, but the kernel caps the receive buffer at "
                f"net.core.rmem_max = {rmem_max} bytes: {SYSCTL_HINT}")
    return "check the publisher's side (ros2 topic info -v <topic>, ros2 topic hz <topic>)"


def udp_receive_buffer_errors(path: Path = UDP_SNMP_PATH) -> int | None:
    """The kernel's count of UDP datagrams dropped because a socket's receive buffer was full (``RcvbufErrors`` in
    /proc/net/snmp, for the whole host; None where unknown). When it grows while a camera's frames go missing,
    the receive buffer is the cause."""
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.startswith("Udp:")]
        return int(dict(zip(rows[0][1:], rows[1][1:], strict=True))["RcvbufErrors"])
    except (OSError, ValueError, IndexError, KeyError):
        return None
