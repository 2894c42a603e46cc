"""The node's labels without ROS: EncoderService on random:tiny shards with a text tower scores every frame against
the labels (text tower once per change, never per frame) and publishes top-k (label, probability) with the frame's
header; bad labels are refused in one line and leave the labels in use."""

import threading
import time

import numpy as np
import pytest
from outboxes import RecordingOutbox, wait_until
from test_node_service import TOPICS, Publishers, camera_messages

from rk_siglip_ros.messages.camera_frames import image_from_message
from rk_siglip_ros.node.config import ConfigError, check_labels, check_top_k, validate
from rk_siglip_ros.node.labels import text_tower_embedder
from rk_siglip_ros.node.service import EncoderService
from rk_siglip_ros.runtime.encoder import SiglipEncoder
from rk_siglip_ros.text import TextEncoder

LABELS = ["a photo of an astronaut", "a cat", "a cup of coffee", "a red door", "a forklift", "a person", "a tree"]


@pytest.fixture(scope="module")
def text_shards(shard_factory):
    return shard_factory("random:tiny", "pipeline3", text=True)


class LabelsOutbox(RecordingOutbox):
    """Stands where the node's labels publisher is: keeps (header, [(label, probability), ...]) per frame."""

    def __call__(self, header, results) -> None:
        self.record((header, list(results)))


class CountingEmbedder:
    """The real text tower, counting how often it runs."""

    def __init__(self, shards) -> None:
        self.embed, self.runs = text_tower_embedder(shards), 0

    def __call__(self, labels):
        self.runs += 1
        return self.embed(labels)


def make_core(shards, types, embedder=None, **parameters):
    publishers, label_topics = Publishers(types), {}

    def open_labels(topic):
        label_topics[topic] = LabelsOutbox()
        return label_topics[topic]

    config = validate({"shards": str(shards), "backend": "onnxruntime", "image_topics": list(TOPICS), **parameters})
    core = EncoderService(config, open_publisher=publishers, now_s=time.time, warn=print, error=print,
                           open_labels_publisher=open_labels, embed_labels=embedder)
    return core, publishers, label_topics


def offer_and_wait(core, outbox, messages, expected):
    for topic, message in messages.items():
        core.offer(topic, message)
        expected += 1
        assert outbox.wait_for(expected), "no embedding published"
    return expected


def test_every_frame_gets_its_top_k_labels_with_the_source_header(text_shards, types):
    embedder = CountingEmbedder(text_shards)
    core, publishers, label_topics = make_core(text_shards, types, embedder, labels=LABELS, labels_top_k=3)
    embeddings = publishers.outboxes["siglip/embeddings"]
    sent = []
    try:
        for sec in (10, 11):
            messages = camera_messages(types, sec)
            offer_and_wait(core, embeddings, messages, len(sent))
            sent += list(messages.values())
        assert label_topics["siglip/labels"].wait_for(len(sent))
    finally:
        core.close()
    assert embedder.runs == 1  # once at start, never per frame
    published = label_topics["siglip/labels"].messages
    with SiglipEncoder.open(text_shards, backend="onnxruntime") as encoder, TextEncoder.open(text_shards) as text:
        label_set = text.label_set(LABELS)
        for source, (header, results) in zip(sent, published, strict=True):
            assert header.stamp.sec == source.header.stamp.sec and header.frame_id == source.header.frame_id
            assert len(results) == 3
            scores = label_set.probabilities(encoder.encode(image_from_message(source)))
            best = np.argsort(-scores, kind="stable")[:3]
            assert [label for label, _ in results] == [LABELS[i] for i in best]
            assert np.allclose([score for _, score in results], scores[best], atol=1e-5)
    assert dict(core.diagnostics().values)["labels"] == str(len(LABELS))


def test_labels_change_at_run_time_and_turn_off(text_shards, types):
    embedder = CountingEmbedder(text_shards)
    core, publishers, label_topics = make_core(text_shards, types, embedder)
    embeddings = publishers.outboxes["siglip/embeddings"]
    try:
        assert label_topics == {} and embedder.runs == 0  # off by default: no topic, no text tower
        count = offer_and_wait(core, embeddings, camera_messages(types, 1), 0)
        core.set_labels(["a cat", "a dog"], background=True)  # as the parameter callback does
        assert core.labels.wait(60)
        core.set_labels_top_k(10)  # more than there are labels: all of them
        assert embedder.runs == 1 and dict(core.diagnostics().values)["labels"] == "2"
        count = offer_and_wait(core, embeddings, camera_messages(types, 2), count)
        outbox = label_topics["siglip/labels"]
        assert outbox.wait_for(3)
        assert all(sorted(label for label, _ in results) == ["a cat", "a dog"] for _, results in outbox.messages)
        with pytest.raises(ConfigError, match=r"labels\[1\] 'a cat' repeats labels\[0\]"):
            core.set_labels(["a cat", "a cat"], background=True)
        assert core.labels.count == 2 and embedder.runs == 1  # refused before the text tower, old labels stay
        core.set_labels([""], background=True)
        count = offer_and_wait(core, embeddings, camera_messages(types, 3), count)
        assert len(outbox.messages) == 3 and dict(core.diagnostics().values)["labels"] == "0"
    finally:
        core.close()


def test_labels_need_a_text_tower(shard_factory, types):
    with pytest.raises(ConfigError, match="labels: shard set .* has no text tower; rebuild it with") as raised:
        make_core(shard_factory("random:tiny", "pipeline3"), types, labels=["a cat"])
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("value", "expected"), [([], ()), ([""], ()), (None, ()), (["a", "b"], ("a", "b"))])
def test_check_labels_off_and_on(value, expected):
    assert check_labels(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    (["a", ""], r"labels\[1\] is empty"),
    (["a", "a"], "repeats"),
    ([f"l{i}" for i in range(10_000)], "10000 labels: at most 1000"),
])
def test_check_labels_refuses(value, message):
    with pytest.raises(ConfigError, match=message):
        check_labels(value)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
def test_check_top_k_refuses(value):
    with pytest.raises(ConfigError, match="labels_top_k must be an integer >= 1"):
        check_top_k(value)


def test_a_label_longer_than_64_tokens_is_cut_with_a_warning(text_shards, types):
    warnings = []
    long_label = " ".join(["a very long label"] * 30)
    config = validate({"shards": str(text_shards), "backend": "onnxruntime", "image_topics": list(TOPICS),
                       "labels": ["a dog", long_label]})  # at start, too
    core = EncoderService(config, open_publisher=Publishers(types), now_s=time.time, warn=warnings.append,
                           error=print, open_labels_publisher=lambda topic: LabelsOutbox())
    try:
        core.set_labels(["a cat", long_label])
    finally:
        core.close()
    assert core.labels.count == 2
    assert len(warnings) == 2 and all("longer than 64 tokens were cut to 64" in line for line in warnings)


class GatedEmbedder(CountingEmbedder):
    """The real text tower, held back until the test opens the gate for that change."""

    def __init__(self, shards) -> None:
        super().__init__(shards)
        self.gates: list[threading.Event] = []

    def __call__(self, labels):
        gate = threading.Event()
        self.gates.append(gate)
        assert gate.wait(60), "the test never opened the gate"
        if labels == ["fail"]:
            raise RuntimeError("text tower exploded")
        return super().__call__(labels)


def test_a_run_time_change_embeds_in_the_background_and_keeps_the_labels_in_use(text_shards, types):
    embedder = GatedEmbedder(text_shards)
    errors, infos = [], []
    config = validate({"shards": str(text_shards), "backend": "onnxruntime", "image_topics": list(TOPICS)})
    core = EncoderService(config, open_publisher=Publishers(types), now_s=time.time, warn=print,
                           error=errors.append, open_labels_publisher=lambda topic: LabelsOutbox(),
                           embed_labels=embedder, info=infos.append)
    try:
        core.set_labels(["a cat", "a dog"], background=True)  # returns at once: the parameter call is not held
        assert core.labels.changing and core.labels.count == 0
        embedder.gates[0].set()
        assert core.labels.wait(60) and core.labels.count == 2
        assert infos and "2 label(s) in use" in infos[-1]
        core.set_labels(["a red door"], background=True)  # superseded by the next change before it finishes
        core.set_labels(["a tree", "a person", "a box"], background=True)
        assert wait_until(lambda: len(embedder.gates) == 3)
        embedder.gates[2].set()
        assert wait_until(lambda: core.labels.count == 3)
        embedder.gates[1].set()  # the older change finishes last: its result is dropped
        assert core.labels.wait(60) and core.labels.count == 3
        core.set_labels(["fail"], background=True)
        assert wait_until(lambda: len(embedder.gates) == 4)
        embedder.gates[3].set()
        assert core.labels.wait(60) and core.labels.count == 3  # a failed change leaves the labels in use
        assert errors == ["labels: text tower exploded; still scoring the previous 3 label(s)"]
    finally:
        for gate in embedder.gates:
            gate.set()
        core.close()




def test_a_run_time_change_to_a_shard_set_without_text_tower_is_refused_at_once(shard_factory, types):
    config = validate({"shards": str(shard_factory("random:tiny", "pipeline3")), "backend": "onnxruntime",
                       "image_topics": list(TOPICS)})
    core = EncoderService(config, open_publisher=Publishers(types), now_s=time.time, warn=print, error=print,
                           open_labels_publisher=lambda topic: LabelsOutbox())
    try:
        with pytest.raises(ConfigError, match="has no text tower"):
            core.set_labels(["a cat"], background=True)
        assert not core.labels.changing and core.labels.count == 0
    finally:
        core.close()
