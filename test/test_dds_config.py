"""The shipped DDS config for large images and how the launch file applies it (rk_siglip_ros.node.dds), off-ROS.

Under a real ROS 2, test/ros/test_dds.py checks that Cyclone accepts the file and that the node starts with it where
the kernel grants less than it asks for."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rk_siglip_ros.node.dds import (
    CYCLONEDDS_URI,
    FASTDDS_PROFILES_FILE,
    LARGE_IMAGES_FILE,
    NODE_QOS,
    DdsConfigError,
    config_family,
    cyclonedds_uri,
    dds_config_file,
    kernel_receive_buffer_limit,
    large_images_file,
    lost_frames_hint,
    middleware_family,
    node_environment,
    node_qos,
    udp_receive_buffer_errors,
    uses_large_image_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
SHIPPED = CONFIG_DIR / LARGE_IMAGES_FILE
NS = {"c": "https://cdds.io/config"}


def test_shipped_config_asks_for_a_large_buffer_without_a_minimum() -> None:
    root = ET.parse(SHIPPED).getroot()
    domain = root.find("c:Domain", NS)
    assert domain is not None and domain.get("id") == "any"  # ROS_DOMAIN_ID still chooses the domain
    element = domain.find("c:Internal/c:SocketReceiveBufferSize", NS)
    assert element is not None
    # min="default": a kernel that grants less (net.core.rmem_max) is a warning, never a start-up failure.
    assert element.get("min") == "default"
    assert element.get("max") == "64MB"
    # Nothing else: interfaces, peers and the rest stay as the environment (ROS_LOCALHOST_ONLY, ...) sets them.
    assert [child.tag.split("}")[1] for child in domain] == ["Internal"]


def test_large_images_is_the_shipped_file_and_empty_means_the_same() -> None:
    assert dds_config_file("large_images", CONFIG_DIR) == SHIPPED.resolve()
    assert dds_config_file("  ", CONFIG_DIR) == SHIPPED.resolve()


def test_none_means_no_file_and_no_environment_change() -> None:
    assert dds_config_file("none", CONFIG_DIR) is None
    assert node_environment("none", CONFIG_DIR, {CYCLONEDDS_URI: "file:///mine.xml"}) == {}


def test_a_path_is_used_as_given(tmp_path: Path) -> None:
    own = tmp_path / "mine.xml"
    own.write_text("<CycloneDDS/>")
    assert dds_config_file(str(own), CONFIG_DIR) == own.resolve()
    assert node_environment(str(own), CONFIG_DIR, {}) == {CYCLONEDDS_URI: own.resolve().as_uri()}


def test_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DdsConfigError, match=r"dds_config:=.*nope\.xml is not a file; pass large_images or none"):
        dds_config_file(str(tmp_path / "nope.xml"), CONFIG_DIR)
    with pytest.raises(DdsConfigError, match="large_images"):  # an install without the file says so too
        dds_config_file("large_images", tmp_path)


def test_our_file_goes_first_so_the_users_own_uri_wins() -> None:
    assert cyclonedds_uri(SHIPPED) == SHIPPED.as_uri()
    inherited = "file:///etc/robot/cyclone.xml"
    environment = node_environment("large_images", CONFIG_DIR, {CYCLONEDDS_URI: inherited})
    assert environment == {CYCLONEDDS_URI: f"{SHIPPED.resolve().as_uri()},{inherited}"}


def test_kernel_limit_is_read_from_procfs_format(tmp_path: Path) -> None:
    proc = tmp_path / "rmem_max"
    proc.write_text("4194304\n")
    assert kernel_receive_buffer_limit(proc) == 4194304
    assert kernel_receive_buffer_limit(tmp_path / "absent") is None


def test_recognises_configs_that_raise_the_receive_buffer(tmp_path: Path) -> None:
    assert uses_large_image_config({CYCLONEDDS_URI: SHIPPED.as_uri()})
    assert not uses_large_image_config({})
    plain = tmp_path / "plain.xml"
    plain.write_text("<CycloneDDS><Domain><General/></Domain></CycloneDDS>")
    assert not uses_large_image_config({CYCLONEDDS_URI: plain.as_uri()})
    own = tmp_path / "own.xml"
    own.write_text(SHIPPED.read_text())
    assert uses_large_image_config({CYCLONEDDS_URI: f"{plain.as_uri()},{own}"})  # a plain path in a list too
    inline = '<CycloneDDS><Domain><Internal><SocketReceiveBufferSize min="default" max="8MB"/></Internal>'
    assert uses_large_image_config({CYCLONEDDS_URI: inline})


def test_lost_frames_hint_says_what_is_missing() -> None:
    cyclone = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert "dds_config:=large_images" in lost_frames_hint(cyclone, rmem_max=212992)
    shipped = {**cyclone, CYCLONEDDS_URI: SHIPPED.as_uri()}
    low = lost_frames_hint(shipped, rmem_max=212992)
    assert "net.core.rmem_max = 212992" in low and "sysctl -w net.core.rmem_max=67108864" in low
    assert "rmem_max" not in lost_frames_hint(shipped, rmem_max=64 * 1024 * 1024)
    assert "rmw_fastrtps_cpp" in lost_frames_hint({"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}, rmem_max=212992)


def test_udp_receive_buffer_errors_from_procfs_format(tmp_path: Path) -> None:
    snmp = tmp_path / "snmp"
    snmp.write_text("Ip: Forwarding DefaultTTL\nIp: 1 64\n"
                    "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
                    "Udp: 123779 0 42980 120000 42980 0\n"
                    "UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
                    "UdpLite: 0 0 0 0 7 0\n")
    assert udp_receive_buffer_errors(snmp) == 42980
    assert udp_receive_buffer_errors(tmp_path / "absent") is None
    if Path("/proc/net/snmp").is_file():  # this host's own counter reads as a count
        assert udp_receive_buffer_errors() >= 0


# ---------------------------------------------------------------------------------------------------- per middleware

FASTDDS_XML = ('<?xml version="1.0"?>\n<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">'
               "<participant profile_name=\"p\" is_default_profile=\"true\"/></profiles>\n")


def test_middleware_family_of_the_rmw_identifiers() -> None:
    assert middleware_family("rmw_cyclonedds_cpp") == "cyclonedds"
    assert middleware_family("rmw_fastrtps_cpp") == middleware_family("rmw_fastrtps_dynamic_cpp") == "fastdds"
    assert middleware_family("rmw_zenoh_cpp") is None and middleware_family(None) is None


def test_large_images_gives_a_fastdds_node_nothing_and_the_profile_is_chosen_for_the_cameras() -> None:
    """The Fast DDS profile acts in the publisher's process (measured: in the node's alone it changed nothing), so
    large_images gives a Fast DDS node nothing; large_images_file names the variant a camera driver should get: the
    _localhost one under ROS_LOCALHOST_ONLY=1 or Jazzy's LOCALHOST range."""
    for rmw in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp", "rmw_zenoh_cpp"):
        assert node_environment("large_images", CONFIG_DIR, {"ROS_LOCALHOST_ONLY": "1"}, rmw) == {}
    assert large_images_file("fastdds", {}) == "fastdds_large_images.xml"
    for loopback in ({"ROS_LOCALHOST_ONLY": "1"}, {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}):
        assert large_images_file("fastdds", loopback) == "fastdds_large_images_localhost.xml"
    assert large_images_file("cyclonedds", {"ROS_LOCALHOST_ONLY": "1"}) == LARGE_IMAGES_FILE
    assert node_environment("large_images", CONFIG_DIR, {}, "rmw_cyclonedds_cpp") == {
        CYCLONEDDS_URI: SHIPPED.resolve().as_uri()}


def test_shipped_fastdds_profiles_enlarge_shared_memory_and_keep_the_loopback_variant_local() -> None:
    ns = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    for name, addresses in (("fastdds_large_images.xml", []), ("fastdds_large_images_localhost.xml", ["127.0.0.1"])):
        root = ET.parse(CONFIG_DIR / name).getroot()
        shm = [t for t in root.iterfind("f:transport_descriptors/f:transport_descriptor", ns)
               if t.findtext("f:type", namespaces=ns) == "SHM"]
        assert len(shm) == 1 and int(shm[0].findtext("f:segment_size", namespaces=ns)) == 32 * 1024 * 1024
        udp = [t for t in root.iterfind("f:transport_descriptors/f:transport_descriptor", ns)
               if t.findtext("f:type", namespaces=ns) == "UDPv4"]
        assert len(udp) == 1
        assert [a.text for a in udp[0].iterfind("f:interfaceWhiteList/f:address", ns)] == addresses
        participant = root.find("f:participant", ns)
        assert participant.get("is_default_profile") == "true"  # what rmw_fastrtps loads
        assert participant.findtext("f:rtps/f:useBuiltinTransports", namespaces=ns) == "false"
        used = [t.text for t in participant.iterfind("f:rtps/f:userTransports/f:transport_id", ns)]
        assert sorted(used) == sorted(t.findtext("f:transport_id", namespaces=ns) for t in shm + udp)
        assert config_family(CONFIG_DIR / name) == "fastdds"


def test_a_path_goes_to_the_middleware_its_root_element_names(tmp_path: Path) -> None:
    fastdds = tmp_path / "robot_fastdds.xml"
    fastdds.write_text(FASTDDS_XML)
    assert config_family(fastdds) == "fastdds" and config_family(SHIPPED) == "cyclonedds"
    assert node_environment(str(fastdds), CONFIG_DIR, {FASTDDS_PROFILES_FILE: "/etc/old.xml"}, "rmw_fastrtps_cpp") \
        == {FASTDDS_PROFILES_FILE: str(fastdds.resolve())}
    assert node_environment(str(SHIPPED), CONFIG_DIR, {}, "rmw_fastrtps_cpp") == {
        CYCLONEDDS_URI: SHIPPED.resolve().as_uri()}
    neither = tmp_path / "neither.xml"
    neither.write_text("<launch/>")
    with pytest.raises(DdsConfigError, match="neither a Cyclone DDS .* nor a Fast DDS"):
        dds_config_file(str(neither), CONFIG_DIR, "rmw_fastrtps_cpp")


def test_qos_auto_is_reliable_on_fastdds_and_sensor_data_elsewhere() -> None:
    assert node_qos("auto", "rmw_fastrtps_cpp") == node_qos("auto", "rmw_fastrtps_dynamic_cpp") == "reliable"
    assert node_qos("auto", "rmw_cyclonedds_cpp") == node_qos("auto", "rmw_zenoh_cpp") == "sensor_data"
    assert node_qos("sensor_data", "rmw_fastrtps_cpp") == "sensor_data"
    assert node_qos("reliable", "rmw_cyclonedds_cpp") == "reliable"


def test_lost_frames_hint_names_the_fastdds_fix() -> None:
    best_effort = lost_frames_hint({"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", NODE_QOS: "sensor_data"}, 212992)
    assert "camera driver" in best_effort and "fastdds_large_images.xml" in best_effort and "qos: auto" in best_effort
    assert "CYCLONEDDS_URI" not in best_effort
    reliable = lost_frames_hint({"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", NODE_QOS: "reliable"}, 212992)
    assert "publisher's side" in reliable
    other = lost_frames_hint({"RMW_IMPLEMENTATION": "rmw_zenoh_cpp"}, 212992)
    assert "rmw_zenoh_cpp" in other and "Cyclone" not in other
