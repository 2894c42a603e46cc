"""The node's whole path without ROS: rosbags camera messages -> EncoderService (real SiglipEncoder on random:tiny
shards) -> embedding message fields, plus the dispatcher keeping three simulated NPU cores busy."""

import threading
import time

import cv2
import numpy as np
import pytest
from outboxes import RecordingOutbox, wait_until
from rosbags.typesys import Stores, get_typestore
from skimage.data import astronaut, chelsea, coffee

from rk_siglip_ros.messages.camera_frames import image_from_message
from rk_siglip_ros.messages.embedding_msg import embedding_from_message
from rk_siglip_ros.node import stats as node_stats
from rk_siglip_ros.node.camera_cdr import camera_deserializer
from rk_siglip_ros.node.config import message_type_for, validate
from rk_siglip_ros.node.mailbox import Dispatcher
from rk_siglip_ros.node.service import EncoderService, ShutdownSummary
from rk_siglip_ros.node.stats import WARN, TopicPublishers
from rk_siglip_ros.runtime.encoder import SiglipEncoder

TOPICS = ("/cam0/image_raw", "/cam1/image_raw", "/cam2/image_raw/compressed")


@pytest.fixture(scope="module")
def tiny_shards(shard_factory):
    return shard_factory("random:tiny", "pipeline3")


def header(types, sec: int, frame_id: str):
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=250_000_000),
                                        frame_id=frame_id)


def camera_messages(types, sec: int) -> dict:
    """One message per topic: rgb8, bgr8 and a JPEG, from three different photos."""
    rgb0, rgb1 = cv2.resize(astronaut(), (96, 72)), cv2.resize(chelsea(), (96, 72))
    bgr1 = cv2.cvtColor(rgb1, cv2.COLOR_RGB2BGR)
    image = types["sensor_msgs/msg/Image"]
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(coffee(), (96, 72)), cv2.COLOR_RGB2BGR))
    assert ok
    return {
        TOPICS[0]: image(header=header(types, sec, "cam0"), height=72, width=96, encoding="rgb8", is_bigendian=0,
                         step=288, data=rgb0.reshape(-1).copy()),
        TOPICS[1]: image(header=header(types, sec, "cam1"), height=72, width=96, encoding="bgr8", is_bigendian=0,
                         step=288, data=bgr1.reshape(-1).copy()),
        TOPICS[2]: types["sensor_msgs/msg/CompressedImage"](header=header(types, sec, "cam2"), format="jpeg",
                                                            data=jpeg.reshape(-1)),
    }




class Outbox(RecordingOutbox):
    """Stands where the node's publishers are: rebuilds real Image messages from the fields it is given."""

    def __init__(self, types) -> None:
        super().__init__()
        self.image_type = types["sensor_msgs/msg/Image"]

    def __call__(self, source_header, fields) -> None:
        self.record(self.image_type(header=source_header, **fields))


class Publishers:
    """Stands where the node opens its publishers: one Outbox per topic, and the topics in the order opened."""

    def __init__(self, types) -> None:
        self.types, self.outboxes = types, {}

    def __call__(self, topic: str) -> Outbox:
        assert topic not in self.outboxes, f"{topic} opened twice"
        self.outboxes[topic] = Outbox(self.types)
        return self.outboxes[topic]


def make_service(tiny_shards, types, deserialize=None, environ=None, **parameters):
    publishers = Publishers(types)
    warnings, errors = [], []
    config = validate({"shards": str(tiny_shards), "backend": "onnxruntime", "image_topics": list(TOPICS),
                       **parameters})
    service = EncoderService(config, open_publisher=publishers, now_s=time.time, warn=warnings.append,
                             error=errors.append, deserialize=deserialize, environ=environ or {})
    tokens = publishers.outboxes.get(config.patch_tokens_topic, Outbox(types))  # never published to if not opened
    return service, publishers.outboxes[config.output_topic], tokens, warnings, errors, publishers


def test_one_embedding_per_frame_with_the_source_header(tiny_shards, types):
    service, embeddings, _, warnings, errors, publishers = make_service(tiny_shards, types)
    assert list(publishers.outboxes) == ["siglip/embeddings"]  # no patch-token topic unless publish_patch_tokens
    sent = []
    try:
        for sec in (100, 101):
            for topic, message in camera_messages(types, sec).items():
                service.offer(topic, message)  # one at a time: nothing is replaced while waiting
                sent.append(message)
                assert embeddings.wait_for(len(sent)), "no embedding published"
    finally:
        service.close()
    assert len(embeddings.messages) == len(sent) == 6 and warnings == [] and errors == []
    with SiglipEncoder.open(tiny_shards, backend="onnxruntime", mode="sequential") as reference:
        for source, published in zip(sent, embeddings.messages, strict=True):
            assert published.header.stamp.sec == source.header.stamp.sec
            assert published.header.stamp.nanosec == source.header.stamp.nanosec
            assert published.header.frame_id == source.header.frame_id
            assert (published.encoding, published.height, published.width) == ("32FC1", 1, service.embedding_dim)
            vector = embedding_from_message(published)[0]
            assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
            expected = reference.encode(image_from_message(source))
            assert float(vector @ expected) > 0.99999
    totals = service.stats.totals()
    assert totals["received"] == totals["published"] == 6


def cdr_deserializers() -> dict:
    """What the node hands the core with raw=True subscriptions: each topic's deserialiser from camera_cdr."""
    return {topic: camera_deserializer(message_type_for(topic)) for topic in TOPICS}


def test_serialized_camera_messages_give_the_same_embeddings_and_headers(tiny_shards, types):
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    service, embeddings, _, warnings, errors, _ = make_service(tiny_shards, types,
                                                               deserialize=cdr_deserializers())
    sent = camera_messages(types, 42)
    try:
        for topic, message in sent.items():
            service.offer(topic, bytes(typestore.serialize_cdr(message, message.__msgtype__)))
            assert embeddings.wait_for(len(embeddings.messages) + 1), "no embedding published"
        service.offer(TOPICS[0], b"\x00\x01\x00\x00garbage")  # bad CDR: a bad frame, logged with its topic
        assert wait_until(lambda: service.stats.totals().get("bad_frames", 0) == 1)
    finally:
        service.close()
    assert errors == [] and len(warnings) == 1
    assert warnings[0].startswith(f"{TOPICS[0]}: skipped a bad frame: cannot deserialise the message (11 bytes)")
    with SiglipEncoder.open(tiny_shards, backend="onnxruntime", mode="sequential") as reference:
        for source, published in zip(sent.values(), embeddings.messages, strict=True):
            assert (published.header.stamp.sec, published.header.stamp.nanosec) == (42, 250_000_000)
            assert published.header.frame_id == source.header.frame_id
            expected = reference.encode(image_from_message(source))
            assert float(embedding_from_message(published)[0] @ expected) > 0.99999
    # The latency percentiles come from the deserialised headers' stamps.
    assert dict(service.diagnostics().values)["latency stamp->publish p50 (ms)"] != "n/a"


def test_incompatible_qos_and_silent_publishers_are_logged_with_topic_and_cause(tiny_shards, types, monkeypatch):
    monkeypatch.setattr(node_stats, "SILENT_WITH_PUBLISHERS_S", 0.0)  # blame at once instead of after 3 s
    service, _, _, warnings, _, _ = make_service(tiny_shards, types, qos="reliable",
                                                 environ={"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    try:
        service.incompatible_qos(TOPICS[1], "RELIABILITY")
        assert len(warnings) == 1 and warnings[0].startswith(f"{TOPICS[1]}: a publisher offers QoS incompatible")
        assert "qos: reliable" in warnings[0] and "RELIABILITY" in warnings[0]
        publishers = {topic: TopicPublishers(1) for topic in TOPICS}
        report = service.diagnostics(publishers=publishers)
        service.diagnostics(publishers=publishers)  # the same silence again: not logged twice in a row
    finally:
        service.close()
    assert report.level == WARN
    logged = warnings[1:]
    assert len(logged) == 3 and all(any(topic in line for line in logged) for topic in TOPICS)
    assert any("QoS incompatible" in line and TOPICS[1] in line for line in logged)
    # Without the large-images config in the environment, lost frames point at it.
    assert any("dds_config:=large_images" in line and TOPICS[0] in line for line in logged)


def test_patch_tokens_are_published_with_the_same_header(tiny_shards, types):
    service, embeddings, tokens, _, _, publishers = make_service(tiny_shards, types, publish_patch_tokens=True,
                                                                 patch_tokens_topic="/test/tokens")
    try:
        message = camera_messages(types, 7)[TOPICS[0]]
        service.offer(TOPICS[0], message)
        assert embeddings.wait_for(1) and tokens.wait_for(1)
    finally:
        service.close()
    assert list(publishers.outboxes) == ["siglip/embeddings", "/test/tokens"]
    published = tokens.messages[0]
    grid = embedding_from_message(published)
    assert grid.shape == (service.encoder.manifest.model.num_tokens, service.encoder.manifest.model.hidden_size)
    assert published.header.frame_id == "cam0" and published.step == grid.shape[1] * 4


def test_bad_frames_are_logged_with_topic_and_reason_and_skipped(tiny_shards, types):
    service, embeddings, _, warnings, errors, _ = make_service(tiny_shards, types)
    try:
        good = camera_messages(types, 5)
        broken = camera_messages(types, 6)
        broken[TOPICS[0]].encoding = "foo"
        broken[TOPICS[1]].data = broken[TOPICS[1]].data[:100]
        broken[TOPICS[2]].data = broken[TOPICS[2]].data[: broken[TOPICS[2]].data.size // 3]
        for topic in TOPICS:
            service.offer(topic, broken[topic])
        assert wait_until(lambda: service.stats.totals().get("bad_frames", 0) == 3)
        service.offer(TOPICS[0], good[TOPICS[0]])  # the node keeps serving after bad frames
        assert embeddings.wait_for(1)
    finally:
        service.close()
    assert [m.header.stamp.sec for m in embeddings.messages] == [5]
    assert errors == []
    expected = [f"{TOPICS[0]}: skipped a bad frame: unknown encoding 'foo' (supported: rgb8, ",
                f"{TOPICS[1]}: skipped a bad frame: data is 100 bytes, shorter than step 288 x height 72 = 20736",
                f"{TOPICS[2]}: skipped a bad frame: corrupt compressed image (jpeg): "]
    assert len(warnings) == 3
    assert all(any(line.startswith(prefix) for line in warnings) for prefix in expected), warnings
    report = service.stats.report()
    assert dict(report.values)["bad frames"] == "3"


def test_close_releases_the_encoder_and_drops_late_frames(tiny_shards, types):
    service, embeddings, _, _, _, _ = make_service(tiny_shards, types)
    assert service.close() == ShutdownSummary(published=0, finished_after_stop=0, dropped=0)
    assert service.close() is None  # idempotent
    with pytest.raises(Exception, match="closed"):
        service.encoder.submit(np.zeros((8, 8, 3), np.uint8))
    service.offer(TOPICS[0], camera_messages(types, 9)[TOPICS[0]])
    assert service.stats.totals()["dropped_shutdown"] == 1 and embeddings.messages == []


def test_close_does_not_wait_for_frames_the_drain_gave_up_on(tiny_shards, types, tmp_path):
    """A frame still running when the drain times out is dropped and cancelled: its remaining shards never run."""
    profile = tmp_path / "slow.json"
    profile.write_text('{"name": "slow", "per_call_ms": 1500, "dense_ms_per_gmac": 0}')  # 1.5 s per shard call
    embeddings, warnings, errors = Outbox(types), [], []
    config = validate({"shards": str(tiny_shards), "backend": "sim", "mode": "pipeline", "timing_profile": str(profile),
                       "image_topics": list(TOPICS)})
    service = EncoderService(config, open_publisher=lambda topic: embeddings, now_s=time.time,
                             warn=warnings.append, error=errors.append)
    shards = len(service.encoder.manifest.shards)
    assert shards == 3
    try:
        service.offer(TOPICS[0], camera_messages(types, 3)[TOPICS[0]])
        assert wait_until(lambda: service.dispatcher.in_flight == 1), "the frame never reached the encoder"
    finally:
        service.close(drain=True, timeout_s=0.05)
    calls = sum(count for count, _ in service.encoder.scheduler.shard_times().values())
    assert calls < shards  # without the cancel, close() would have run all three 1.5 s shards of the dropped frame
    totals = service.stats.totals()
    assert totals["dropped_shutdown"] == 1 and totals.get("published", 0) == 0 and embeddings.messages == []
    # The 1.5 s call outlives the 0.05 s drain + grace: shutdown is bounded and says which core it left behind.
    assert all("stuck in shard 0" in line for line in errors), errors


def test_close_finishes_the_frames_in_flight_and_says_so(tiny_shards, types, tmp_path):
    """Drain: a frame in the encoder when close() comes is finished and published; the summary counts it."""
    profile = tmp_path / "slow.json"
    profile.write_text('{"name": "slow", "per_call_ms": 100, "dense_ms_per_gmac": 0}')
    embeddings = Outbox(types)
    config = validate({"shards": str(tiny_shards), "backend": "sim", "mode": "pipeline", "timing_profile": str(profile),
                       "image_topics": list(TOPICS)})
    service = EncoderService(config, open_publisher=lambda topic: embeddings, now_s=time.time,
                              warn=print, error=print)
    try:
        service.offer(TOPICS[0], camera_messages(types, 3)[TOPICS[0]])
        assert wait_until(lambda: service.dispatcher.in_flight == 1), "the frame never reached the encoder"
    finally:
        summary = service.close(drain=True)
    assert summary == ShutdownSummary(published=1, finished_after_stop=1, dropped=0)
    assert len(embeddings.messages) == 1
    assert summary.line().startswith("stopped: published 1 embeddings, 1 of them finished after the stop request")


@pytest.mark.parametrize("backend, hardware_id", [("onnxruntime", "cpu/onnxruntime"),
                                                   ("sim", "rk3588-npu-simulated/sim"),
                                                   ("auto", "cpu/onnxruntime")])
def test_hardware_id_names_the_backend_actually_opened(tiny_shards, backend, hardware_id):
    """backend auto resolves to onnxruntime off the board: diagnostics and the start log say which, never auto."""
    config = validate({"shards": str(tiny_shards), "backend": backend})
    service = EncoderService(config, open_publisher=lambda topic: (lambda header, fields: None), now_s=time.time,
                              warn=print, error=print)
    try:
        assert service.hardware_id == hardware_id
        assert service.backend_name == hardware_id.split("/")[1]
    finally:
        service.close()


def test_diagnostics_report_cores_and_capacity(tiny_shards, types):
    service, embeddings, _, _, _, _ = make_service(tiny_shards, types)
    try:
        for topic, message in camera_messages(types, 11).items():
            service.offer(topic, message)
        embeddings.wait_for(1)
        values = dict(service.diagnostics().values)
    finally:
        service.close()
    assert values["capacity"] == str(service.encoder.capacity)
    assert {f"core {core} busy (%)" for core in (0, 1, 2)} <= set(values)


def test_three_cameras_keep_three_simulated_cores_busy_without_a_backlog(tiny_shards):
    """3 cameras at 30 Hz into the sim backend's 3-stage pipeline (about 19 ms per stage): more than it can take."""
    encoder = SiglipEncoder.open(tiny_shards, backend="sim", mode="pipeline", cores=(0, 1, 2), trace=True)
    published = []
    lock = threading.Lock()

    def publish(frame, result):
        with lock:
            published.append(frame.camera)

    dispatcher = Dispatcher(encoder, publish, cameras=TOPICS, convert=lambda image: image)
    images = [np.full((64, 64, 3), index, np.uint8) for index in range(3)]
    samples = []
    dispatcher.start()
    try:
        period, start = 1.0 / 30.0, time.perf_counter()
        for tick in range(90):  # 3 s of frames
            for topic, image in zip(TOPICS, images, strict=True):
                dispatcher.offer(topic, image)
            samples.append((encoder.in_flight, sum(dispatcher.pending().values())))
            time.sleep(max(0.0, start + (tick + 1) * period - time.perf_counter()))
        core_busy = encoder.core_busy()
    finally:
        dispatcher.stop(drain=True, timeout=30.0)
        encoder.close()

    totals = dispatcher.stats.totals()
    # No backlog, by construction and by count: never more than capacity in the encoder and one frame per camera
    # waiting; every received frame was published or dropped, none queued up.
    assert max(in_flight for in_flight, _ in samples) <= encoder.capacity == 3
    assert max(pending for _, pending in samples) <= 3
    assert totals["received"] == 270
    assert totals["published"] + totals.get("dropped_busy", 0) + totals.get("dropped_shutdown", 0) == 270
    # All three cores worked at the same time: some instant lies inside a shard run on every core.
    events = list(encoder.scheduler.trace)
    assert {event.core for event in events} == {0, 1, 2}
    overlap = all_cores_busy_fraction(events)
    assert overlap > 0.0
    # Cameras shared the encoder (each got at least a quarter of the frames; a third is the ideal).
    counts = {topic: published.count(topic) for topic in TOPICS}
    assert min(counts.values()) >= len(published) / 4, counts
    print(f"\n3 cameras x 30 Hz -> {len(published) / 3.0:.1f} embeddings/s, core busy "
          f"{ {core: round(busy, 2) for core, busy in core_busy.items()} }, all 3 cores busy {overlap:.0%} of the run, "
          f"per camera {counts}")


def all_cores_busy_fraction(events) -> float:
    """Fraction of the traced span during which every core was running a shard."""
    points = sorted([(event.start, event.core, +1) for event in events] + [(event.end, event.core, -1)
                                                                             for event in events])
    running = {0: 0, 1: 0, 2: 0}
    together, last = 0.0, points[0][0]
    for when, core, step in points:
        if all(running.values()):
            together += when - last
        running[core] += step
        last = when
    return together / max(points[-1][0] - points[0][0], 1e-9)
