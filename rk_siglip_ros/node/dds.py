"""Which DDS configuration the encoder node runs with, and what the kernel allows it; ROS-free.

Raw camera images are large (1920x1080 rgb8: 6.2 MB, ~100 UDP fragments). Cyclone DDS's default socket receive
buffer (the kernel's ``net.core.rmem_default``, ~208 KB) overflows within one such frame, and over best effort a
frame with a lost fragment is lost whole: 3 x 30 Hz of 1080p reach a subscriber at 0 frames/s, silently. The
package ships ``config/cyclonedds_large_images.xml`` (a 64 MB request that the kernel caps at
``net.core.rmem_max``, never a start-up failure); the launch file points ``CYCLONEDDS_URI`` of the node process at
it through :func:`node_environment`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rk_siglip_ros.errors import UserError

CYCLONEDDS_URI = "CYCLONEDDS_URI"
LARGE_IMAGES = "large_images"
NONE = "none"
DDS_CONFIG_CHOICES = (LARGE_IMAGES, NONE)
LARGE_IMAGES_FILE = "cyclonedds_large_images.xml"
RMEM_MAX_PATH = Path("/proc/sys/net/core/rmem_max")
UDP_SNMP_PATH = Path("/proc/net/snmp")
# What the shipped config asks for; a kernel limit below this is worth a hint when large frames go missing.
REQUESTED_RECEIVE_BUFFER = 64 * 1024 * 1024
SYSCTL_HINT = f"sudo sysctl -w net.core.rmem_max={REQUESTED_RECEIVE_BUFFER}"


class DdsConfigError(UserError, ValueError):
    """A ``dds_config`` value that names no usable file; the message says what to pass instead."""


def dds_config_file(choice: str, config_dir: str | Path) -> Path | None:
    """The Cyclone XML file for a ``dds_config`` launch argument: ``large_images`` (or empty) = the shipped file in
    ``config_dir``, ``none`` = no file (the environment's own DDS settings only), anything else = a path."""
    choice = choice.strip()
    if choice in ("", LARGE_IMAGES):
        path = Path(config_dir) / LARGE_IMAGES_FILE
    elif choice == NONE:
        return None
    else:
        path = Path(choice).expanduser()
    if not path.is_file():
        raise DdsConfigError(f"dds_config:={choice or LARGE_IMAGES}: {path} is not a file; pass "
                             f"{' or '.join(DDS_CONFIG_CHOICES)}, or the path of a Cyclone DDS XML file")
    return path.resolve()


def cyclonedds_uri(config_file: Path, inherited: str | None = None) -> str:
    """``CYCLONEDDS_URI`` with our file first and then whatever the environment already had: Cyclone applies a
    comma-separated list in order, later entries winning, so the user's own settings (peers, interfaces, ...) stay
    in force and only what they leave unset comes from our file."""
    ours = config_file.as_uri()
    inherited = (inherited or "").strip()
    return f"{ours},{inherited}" if inherited else ours


def node_environment(choice: str, config_dir: str | Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables to add to the node process for ``dds_config:=choice`` (empty for ``none``)."""
    config_file = dds_config_file(choice, config_dir)
    if config_file is None:
        return {}
    return {CYCLONEDDS_URI: cyclonedds_uri(config_file, environ.get(CYCLONEDDS_URI))}


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
    is raw images larger than the DDS receive buffer (lost whole over best effort)."""
    rmw = environ.get("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    if "cyclonedds" not in rmw:
        return (f"large raw images are lost when the DDS receive buffer is too small: raise {rmw}'s socket receive "
                f"buffer, and net.core.rmem_max ({SYSCTL_HINT})")
    if not uses_large_image_config(environ):
        return ("large raw images overflow Cyclone DDS's default receive buffer: launch with "
                "dds_config:=large_images, or export CYCLONEDDS_URI=file://<share>/rk_siglip_ros/config/"
                f"{LARGE_IMAGES_FILE} (docs/node.md: Large images and DDS)")
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
