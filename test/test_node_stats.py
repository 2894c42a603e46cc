"""Diagnostics counters: rates per period, drops by reason, latency percentiles, levels."""

import pytest

from rk_siglip_ros.node.stats import (
    ERROR,
    OK,
    SILENT_WITH_PUBLISHERS_S,
    WARN,
    NodeStats,
    TopicPublishers,
    stamp_to_seconds,
)

CAMERAS = ("/cam0/image_raw", "/cam1/image_raw/compressed")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def values(report) -> dict[str, str]:
    return dict(report.values)


def test_rates_drops_and_latency_over_one_period():
    clock = Clock()
    stats = NodeStats(CAMERAS, clock=clock)
    for _ in range(30):
        stats.received(CAMERAS[0])
    for _ in range(10):
        stats.received(CAMERAS[1])
    for millis in range(1, 101):
        stats.published(CAMERAS[0], latency_s=millis / 1000.0, encode_latency_s=0.2)
    for _ in range(4):
        stats.dropped(CAMERAS[1], "busy")
    stats.dropped(CAMERAS[0], "rate_limit")
    clock.now += 2.0
    report = stats.report(core_busy={0: 0.5, 2: 0.999}, in_flight=3, capacity=3)
    table = values(report)
    assert report.level == OK
    assert table["input rate (Hz)"] == "20.00" and table["output rate (Hz)"] == "50.00"
    assert table["dropped, busy (per s)"] == "2.00" and table["dropped, rate limit (per s)"] == "0.50"
    assert table["latency stamp->publish p50 (ms)"] == "50.5"
    assert table["latency stamp->publish p95 (ms)"] == "95.0"
    assert table["encode latency p50 (ms)"] == "200.0"
    assert table["core 0 busy (%)"] == "50.0" and table["core 2 busy (%)"] == "99.9"
    assert table["in flight"] == "3" and table["capacity"] == "3"
    assert table[f"{CAMERAS[0]}: input rate (Hz)"] == "15.00" and table[f"{CAMERAS[1]}: dropped"] == "4"


def test_each_report_covers_only_its_own_period():
    clock = Clock()
    stats = NodeStats(CAMERAS, clock=clock)
    for camera in CAMERAS:
        stats.received(camera)
    clock.now += 1.0
    stats.report()
    clock.now += 1.0
    table = values(stats.report())
    assert table["input rate (Hz)"] == "0.00" and table["latency stamp->publish p50 (ms)"] == "n/a"
    assert table["total received"] == "2"  # totals keep counting across periods


def test_silent_camera_warns_with_its_topic():
    stats = NodeStats(CAMERAS, clock=Clock())
    stats.received(CAMERAS[0])
    report = stats.report()
    assert report.level == WARN and f"no frames on {CAMERAS[1]}" in report.message


# ---------------------------------------------------------------------- cameras with publishers but no frames

HINT = "launch with dds_config:=large_images"


def silent_report(clock: Clock, publishers: dict, incompatible: str | None = None, silent_s: float = 10.0):
    """CAMERAS[0] sends, CAMERAS[1] has been silent for ``silent_s``; the report with ``publishers``."""
    stats = NodeStats(CAMERAS, clock=clock)
    if incompatible:
        stats.incompatible_qos(CAMERAS[1], incompatible)
    clock.now += silent_s
    stats.received(CAMERAS[0])
    return stats.report(publishers=publishers, lost_frames_hint=HINT)


def test_publishers_but_no_frames_warns_with_topic_and_the_dds_hint():
    report = silent_report(Clock(), {CAMERAS[0]: TopicPublishers(1), CAMERAS[1]: TopicPublishers(2)})
    assert report.level == WARN
    expected = f"no frames on {CAMERAS[1]} for 10 s from 2 publishers: frames likely lost in DDS; {HINT}"
    assert report.message == expected
    assert report.silent_with_publishers == {CAMERAS[1]: expected}  # the node logs these
    assert values(report)[f"{CAMERAS[1]}: publishers"] == "2"


def test_kernel_udp_drops_turn_likely_into_certain():
    clock = Clock()
    stats = NodeStats(CAMERAS, clock=clock)
    clock.now += 10.0
    stats.received(CAMERAS[0])
    report = stats.report(publishers={CAMERAS[1]: TopicPublishers(1)}, lost_frames_hint=HINT, udp_drops=4200)
    line = report.silent_with_publishers[CAMERAS[1]]
    assert "frames lost in DDS (the kernel dropped 4200 UDP datagrams for full receive buffers" in line
    assert HINT in line and "likely" not in line
    assert values(report)["UDP drops, receive buffer full (host, per s)"] == "420.0"


def test_incompatible_qos_is_named_as_the_cause():
    report = silent_report(Clock(), {CAMERAS[1]: TopicPublishers(1)}, incompatible="RELIABILITY")
    line = report.silent_with_publishers[CAMERAS[1]]
    assert line.startswith(f"no frames on {CAMERAS[1]} for 10 s from 1 publisher: QoS incompatible")
    assert "RELIABILITY" in line and "qos parameter" in line and HINT not in line
    assert report.level == WARN and line in report.message


def test_publishers_of_another_type_are_named():
    other = TopicPublishers(1, other_types=("sensor_msgs/msg/CompressedImage",))
    line = silent_report(Clock(), {CAMERAS[1]: other}).silent_with_publishers[CAMERAS[1]]
    assert "they publish sensor_msgs/msg/CompressedImage" in line and HINT not in line


def test_no_publisher_is_said_plainly_and_not_logged():
    report = silent_report(Clock(), {CAMERAS[1]: TopicPublishers(0)})
    assert f"no frames on {CAMERAS[1]}: no publisher" in report.message
    assert report.silent_with_publishers == {}


def test_a_camera_that_just_started_is_not_blamed_yet():
    report = silent_report(Clock(), {CAMERAS[1]: TopicPublishers(1)}, silent_s=SILENT_WITH_PUBLISHERS_S / 2)
    assert report.silent_with_publishers == {}
    assert report.level == WARN and HINT not in report.message  # still "no frames", without guessing a cause


def test_frames_arriving_again_end_the_warning():
    clock = Clock()
    stats = NodeStats(CAMERAS, clock=clock)
    stats.incompatible_qos(CAMERAS[1], "DURABILITY")
    clock.now += 10.0
    for camera in CAMERAS:  # a compatible publisher appeared
        stats.received(camera)
    report = stats.report(publishers={camera: TopicPublishers(2) for camera in CAMERAS}, lost_frames_hint=HINT)
    assert report.level == OK and report.silent_with_publishers == {}
    assert stats.totals()["incompatible_qos"] == 1


def test_a_qos_problem_that_was_fixed_is_not_blamed_for_a_later_silence():
    clock = Clock()
    stats = NodeStats(CAMERAS, clock=clock)
    stats.incompatible_qos(CAMERAS[1], "RELIABILITY")
    stats.received(CAMERAS[1])  # the publisher's QoS was fixed: frames arrive
    stats.report(publishers={CAMERAS[1]: TopicPublishers(1)}, lost_frames_hint=HINT)
    clock.now += 10.0  # then the camera falls silent again
    report = stats.report(publishers={CAMERAS[1]: TopicPublishers(1)}, lost_frames_hint=HINT)
    line = report.silent_with_publishers[CAMERAS[1]]
    assert "QoS incompatible" not in line and HINT in line


def test_bad_frames_warn_with_topic_and_reason():
    stats = NodeStats(CAMERAS, clock=Clock())
    for camera in CAMERAS:
        stats.received(camera)
    stats.bad_frame(CAMERAS[1], "corrupt compressed image (jpeg): 90 bytes do not decode")
    report = stats.report()
    assert report.level == WARN
    assert f"1 bad frames (last: {CAMERAS[1]}: corrupt compressed image" in report.message
    assert values(report)["last bad frame"].startswith(CAMERAS[1])


def test_errors_without_output_are_an_error():
    stats = NodeStats(CAMERAS, clock=Clock())
    for camera in CAMERAS:
        stats.received(camera)
    stats.error(CAMERAS[0], "RuntimeError: NPU timeout")
    report = stats.report()
    assert report.level == ERROR and "NPU timeout" in report.message
    # Some output despite errors is degraded, not failed.
    for camera in CAMERAS:
        stats.received(camera)
    stats.error(CAMERAS[0], "RuntimeError: NPU timeout")
    stats.published(CAMERAS[1], 0.1)
    assert stats.report().level == WARN


def test_unknown_drop_reason_is_a_bug():
    with pytest.raises(ValueError, match="drop reason"):
        NodeStats().dropped("/cam", "tired")


def test_stamp_to_seconds():
    class Stamp:
        sec, nanosec = 12, 500_000_000

    assert stamp_to_seconds(Stamp()) == 12.5


def test_log_throttle_is_per_key_and_counts_what_it_held_back():
    from rk_siglip_ros.node.stats import LogThrottle

    clock = Clock()
    throttle = LogThrottle(period_s=5.0, clock=clock)
    assert throttle.admit("/cam0") == 0
    assert throttle.admit("/cam1") == 0  # another topic has its own budget
    assert [throttle.admit("/cam0") for _ in range(3)] == [None, None, None]
    clock.now += 5.0
    assert throttle.admit("/cam0") == 3
    assert throttle.admit("/cam0") is None
