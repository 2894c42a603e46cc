"""encode_bag --labels and search_bag on a bag of known photos (scikit-image), against transformers on the same
tiny SigLIP checkpoint: the Classification messages and the ranking equal sigmoid(logits_per_image), the contact
sheet has one thumbnail per hit, and every bad request is one line with nothing written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from skimage import data as photos
from tiny_checkpoints import BIAS

from rk_siglip_ros.bag.io import merged_typestore
from rk_siglip_ros.bag.search import TILE, custom_data, sheet_layout
from rk_siglip_ros.builder.build import build_shards
from rk_siglip_ros.builder.models import hf_image_processor, load_vision_tower
from rk_siglip_ros.builder.text_tower import hf_token_ids
from rk_siglip_ros.messages.embedding_msg import embedding_fields
from rk_siglip_ros.messages.labels_msg import results_of

STORE = get_typestore(Stores.ROS2_HUMBLE)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field")
LABELS = ["a photo of an astronaut", "a cup of coffee", "a cat", "a rocket", "a camera man"]
QUERIES = ["an astronaut in a suit", "a ginger cat"]


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(photos, name)()).convert("RGB").resize((96, 72)))


def header(index: int, frame_id: str):
    return STORE.types["std_msgs/msg/Header"](
        stamp=STORE.types["builtin_interfaces/msg/Time"](sec=1_700_000_000 + index, nanosec=1000 * index),
        frame_id=frame_id)


def write_photo_bag(path: Path) -> list[tuple[str, str]]:
    """Even photos raw rgb8 on /cam0/image_raw, odd ones JPEG on /cam1/image_raw/compressed; returns (topic, name)."""
    image_type, compressed_type = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
    written = []
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        raw = writer.add_connection("/cam0/image_raw", image_type, typestore=STORE)
        jpeg = writer.add_connection("/cam1/image_raw/compressed", compressed_type, typestore=STORE)
        for index, name in enumerate(PHOTOS):
            rgb = photo(name)
            if index % 2 == 0:
                message = STORE.types[image_type](header=header(index, "cam0"), height=72, width=96, encoding="rgb8",
                                                  is_bigendian=0, step=288, data=rgb.reshape(-1).copy())
                writer.write(raw, 10**18 + index, STORE.serialize_cdr(message, image_type))
                written.append(("/cam0/image_raw", name))
            else:
                ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                assert ok
                message = STORE.types[compressed_type](header=header(index, "cam1"), format="jpeg",
                                                       data=data.reshape(-1))
                writer.write(jpeg, 10**18 + index, STORE.serialize_cdr(message, compressed_type))
                written.append(("/cam1/image_raw/compressed", name))
    return written


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from rk_siglip_ros.cli.{tool} import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def photo_bag(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    path = tmp_path_factory.mktemp("bags") / "photos"
    return path, write_photo_bag(path)


@pytest.fixture(scope="module")
def encoded(photo_bag, tiny_text_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("encoded") / "photos_emb"
    done = run("encode_bag", str(photo_bag[0]), str(out), "--shards", str(tiny_text_shards), "--backend", "onnxruntime",
               "--no-progress", "--labels", *LABELS, "--labels-top-k", "3")
    assert done.returncode == 0, done.stderr
    assert "labels           5 -> /siglip/labels (vision_msgs/Classification, top 3 per frame)" in done.stdout
    return out


def hf_probabilities(checkpoint: Path, texts: list[str]) -> np.ndarray:
    """(photos, texts) sigmoid(logits_per_image) from transformers, photos decoded as the bag holds them."""
    from transformers import AutoTokenizer, SiglipModel

    model = SiglipModel.from_pretrained(checkpoint, attn_implementation="eager").eval()
    images = []
    for index, name in enumerate(PHOTOS):
        rgb = photo(name)
        if index % 2:  # the JPEG round trip the bag applied
            _, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            rgb = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        images.append(rgb)
    pixels = hf_image_processor(load_vision_tower(str(checkpoint)))(images=images, return_tensors="pt")
    ids = torch.from_numpy(hf_token_ids(AutoTokenizer.from_pretrained(str(checkpoint)), texts, 64))
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels["pixel_values"].float()).logits_per_image
    return torch.sigmoid(logits).numpy()


def test_encode_bag_writes_classifications_rosbags_reads(encoded, tiny_siglip_checkpoint):
    reference = hf_probabilities(tiny_siglip_checkpoint, LABELS)
    with Reader(encoded) as reader:
        store = merged_typestore(reader.connections, "humble")  # the bag's own definitions
        topics = {c.topic: c for c in reader.connections}
        labels_connection = topics["/siglip/labels"]
        assert labels_connection.msgtype == "vision_msgs/msg/Classification"
        assert "ObjectHypothesis" in labels_connection.msgdef.data  # the definition travels with the bag
        custom = custom_data(reader)
        messages = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages([labels_connection])]
    assert json.loads(custom["rk_siglip_ros.labels"]) == LABELS and custom["rk_siglip_ros.shards"]
    assert len(messages) == len(PHOTOS)
    for index, message in enumerate(messages):
        assert (message.header.stamp.sec, message.header.frame_id) == (1_700_000_000 + index, f"cam{index % 2}")
        results = results_of(message)
        expected = np.argsort(-reference[index], kind="stable")[:3]
        assert [label for label, _ in results] == [LABELS[i] for i in expected]
        assert np.allclose([score for _, score in results], reference[index][expected], atol=1e-4)


def parse_hits(stdout: str) -> dict[str, list[tuple[int, str, str, str, float]]]:
    hits: dict[str, list] = {}
    query = None
    for line in stdout.splitlines():
        match = re.match(r"query '(.*)':$", line)
        if match:
            query = match.group(1)
            hits[query] = []
            continue
        match = re.match(r"\s+(\d+)\s+(\d+\.\d{9})\s+(\S+)\s+(\S+)\s+([0-9.e-]+)$", line)
        if match and query is not None:
            rank, stamp, topic, frame_id, probability = match.groups()
            hits[query].append((int(rank), stamp, topic, frame_id, float(probability)))
    return hits


def test_search_bag_ranks_known_photos_as_transformers_does(encoded, tiny_siglip_checkpoint, photo_bag, tmp_path):
    sheet = tmp_path / "sheet.png"
    done = run("search_bag", str(encoded), *QUERIES, "--top", "4", "--sheet", str(sheet))
    assert done.returncode == 0, done.stderr
    hits = parse_hits(done.stdout)
    reference = hf_probabilities(tiny_siglip_checkpoint, QUERIES)
    written = photo_bag[1]
    for column, query in enumerate(QUERIES):
        order = np.argsort(-reference[:, column], kind="stable")[:4]
        assert [rank for rank, *_ in hits[query]] == [1, 2, 3, 4]
        for (_, stamp, topic, frame_id, probability), index in zip(hits[query], order, strict=True):
            assert stamp == f"{1_700_000_000 + index}.{1000 * index:09d}"
            assert (topic, frame_id) == (written[index][0], f"cam{index % 2}")
            assert probability == pytest.approx(float(reference[index, column]), abs=1e-4)
    # The contact sheet: one thumbnail per hit, each showing its photo.
    image = np.asarray(Image.open(sheet).convert("RGB"))
    layout = sheet_layout(len(QUERIES), 4)
    assert image.shape[:2] == (layout.size[1], layout.size[0])
    for row, query in enumerate(QUERIES):
        order = np.argsort(-reference[:, row], kind="stable")[:4]
        for column, index in enumerate(order):
            left, top, right, bottom = layout.tiles[row * 4 + column]
            tile = image[top:bottom, left:right].astype(np.float32)
            thumbnail = np.asarray(ImageOps.contain(Image.fromarray(photo(PHOTOS[index])), TILE)).astype(np.float32)
            tile = tile[:thumbnail.shape[0], :thumbnail.shape[1]]  # 96 x 72 fills the 192 x 144 tile exactly
            others = [np.abs(tile - np.asarray(ImageOps.contain(Image.fromarray(photo(name)), TILE))).mean()
                      for name in PHOTOS if name != PHOTOS[index]]
            assert np.abs(tile - thumbnail).mean() < min(others), (query, column, PHOTOS[index])
    assert f"contact sheet: {sheet} (8 frames" in done.stdout


def write_embedding_bag(path: Path, width: int, count: int = 3, corrupt: bool = False) -> None:
    """A bag as `ros2 bag record /siglip/embeddings` of the node would hold: embeddings, no metadata about them
    (``corrupt``: plus one truncated embedding message and one truncated camera frame)."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/siglip/embeddings", "sensor_msgs/msg/Image", typestore=STORE)
        camera = writer.add_connection("/cam0/image_raw", "sensor_msgs/msg/Image", typestore=STORE)
        rng = np.random.default_rng(1)
        for index in range(count):
            vector = rng.normal(size=width).astype(np.float32)
            message = STORE.types["sensor_msgs/msg/Image"](header=header(index, "cam0"),
                                                           **embedding_fields(vector / np.linalg.norm(vector)))
            raw = STORE.serialize_cdr(message, "sensor_msgs/msg/Image")
            writer.write(connection, 10**18 + index, raw)
            if corrupt and index == 0:
                writer.write(connection, 10**18 + index, raw[:20])
                writer.write(camera, 10**18 + index, raw[:6])


def test_search_bag_of_a_node_recording_needs_shards_then_works(tiny_text_shards, tmp_path):
    bag = tmp_path / "recorded"
    write_embedding_bag(bag, 64)
    done = run("search_bag", str(bag), "a cat")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "not recorded in the bag's metadata); pass --shards DIR" in done.stderr
    done = run("search_bag", str(bag), "a cat", "--shards", str(tiny_text_shards), "--top", "10")
    assert done.returncode == 0, done.stderr
    assert len(parse_hits(done.stdout)["a cat"]) == 3  # --top larger than the bag: every frame once
    assert "\n  " in done.stdout and " - " in done.stdout  # no image topic in such a bag: shown as "-"


def test_search_bag_skips_and_counts_corrupt_messages(tiny_text_shards, tmp_path):
    bag = tmp_path / "corrupt"
    write_embedding_bag(bag, 64, corrupt=True)
    sheet = tmp_path / "sheet.png"
    done = run("search_bag", str(bag), "a cat", "--shards", str(tiny_text_shards), "--sheet", str(sheet))
    assert done.returncode == 0, done.stderr
    assert "skipped 1 unreadable message(s) on /siglip/embeddings" in done.stderr
    assert len(parse_hits(done.stdout)["a cat"]) == 3 and sheet.exists()


def test_search_bag_accepts_another_build_of_the_same_model(encoded, tiny_siglip_checkpoint, tmp_path):
    rebuilt = tmp_path / "rebuilt"
    build_shards(str(tiny_siglip_checkpoint), rebuilt, profile="whole", formats=("onnx",), progress=False, text=True)
    done = run("search_bag", str(encoded), "a cat", "--shards", str(rebuilt))
    assert done.returncode == 0, done.stderr
    assert "is another build of" in done.stderr and len(parse_hits(done.stdout)["a cat"]) == 5


def test_search_bag_refusals_are_one_line_and_write_nothing(tiny_text_shards, shard_factory, photo_bag, encoded,
                                                             tmp_path):
    narrow, recorded = tmp_path / "narrow", tmp_path / "recorded"
    write_embedding_bag(narrow, 32)
    write_embedding_bag(recorded, 64)
    sheet = tmp_path / "sheet.png"
    vision_only = shard_factory(model="random:tiny")
    other_text = shard_factory(model="random:tiny", text=True)
    cases = [
        ((str(photo_bag[0]), "a cat"), "the bag has no embeddings on /siglip/embeddings"),
        ((str(narrow), "a cat", "--shards", str(tiny_text_shards)), "embeddings are 32 wide but shard set"),
        ((str(encoded), "a cat", "--shards", str(other_text)), "the bag's embeddings came from another shard set"),
        ((str(recorded), "a cat", "--shards", str(vision_only)), "has no text tower"),
        ((str(encoded), "a cat", "a cat"), "repeats"),
        ((str(encoded), ""), "is empty"),
        ((str(encoded), "a cat", "--top", "0"), "--top 0: need at least 1"),
        ((str(tmp_path / "missing"), "a cat"), "no such bag"),
    ]
    for arguments, message in cases:
        done = run("search_bag", *arguments, "--sheet", str(sheet))
        assert done.returncode == 2, (arguments, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("search_bag: error: ") and message in lines[0], lines
        assert not sheet.exists()


def test_encode_bag_label_refusals_write_nothing(photo_bag, tiny_text_shards, shard_factory, tmp_path):
    out = tmp_path / "out"
    cases = [
        (("--shards", str(tiny_text_shards), "--labels", "a cat", "a cat"), "repeats labels[0]"),
        (("--shards", str(tiny_text_shards), "--labels", "a cat", ""), "labels[1] is empty"),
        (("--shards", str(shard_factory(model="random:tiny")), "--labels", "a cat"), "has no text tower"),
        (("--shards", str(tiny_text_shards), "--labels", "a cat", "--labels-top-k", "0"), "--labels-top-k 0"),
        (("--shards", str(tiny_text_shards), "--labels", "a cat", "--labels-topic", "/siglip/embeddings"),
         "is the embedding"),
    ]
    for arguments, message in cases:
        done = run("encode_bag", str(photo_bag[0]), str(out), "--no-progress", *arguments)
        assert done.returncode == 2, (arguments, done.stderr)
        assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr
        assert not out.exists()
    many = [f"label {i}" for i in range(10_000)]
    done = run("encode_bag", str(photo_bag[0]), str(out), "--shards", str(tiny_text_shards), "--labels", *many)
    assert done.returncode == 2 and "10000 labels: at most 1000" in done.stderr and not out.exists()


def test_labels_bias_comes_from_the_checkpoint(encoded):
    # Guards the fixture: scores above are against a checkpoint whose bias is not the random presets' -10.
    assert BIAS != -10.0


@pytest.mark.parametrize(("tool", "words"), [
    ("search_bag", ["--shards", "--top", "--sheet", "metadata", "contact sheet", "probability"]),
    ("encode_text", ["--shards", "--out", "padded to 64", "exit status"]),
    ("encode_bag", ["--labels", "--labels-top-k", "--labels-topic", "vision_msgs/Classification"]),
    ("encode_images", ["--labels", "--scores"]),
])
def test_help_explains_the_text_options(tool, words):
    done = run(tool, "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert all(word in text for word in words), (tool, [w for w in words if w not in text])
