"""`make demo`: the newcomer's first command, offline, from a fresh clone.

1. builds a shard set from ``random:siglip-base-patch16-512`` (the real SigLIP-B/16@512 architecture with RANDOM
   weights: no network needed), with its text tower, into demo_out/shards/, or reuses a valid earlier build;
2. writes a short camera bag from real photos (scikit-image's sample images) on two topics in several encodings;
3. replays it through encode_bag (the same library the console script runs) with a few labels, so the output bag
   also holds /siglip/labels;
4. prints frames, embedding dim, throughput, the cosine similarity matrix between frames and each frame's best
   labels, then runs one search_bag query over the output bag and writes its contact sheet; then the commands to
   do the same with real weights and a real bag.

ONNX shards only: compiling the full model to .rknn adds minutes and the .rknn files only run on a board (or in
the slow simulator); the CPU backend is what a laptop without an NPU uses anyway. ``--formats onnx rknn`` builds
both. ``python tools/demo.py --help`` lists the knobs (the test suite runs this on ``random:tiny``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import Stores, get_typestore
from shard_reuse import reuse_or_build

from rk_siglip_ros.bag import EMBEDDING_TOPIC, STORAGES, ReplaySummary, encode_bag, format_summary, open_bag, search
from rk_siglip_ros.manifest import Manifest
from rk_siglip_ros.messages.labels_msg import LABELS_TOPIC, register_classification, results_of

DEFAULT_MODEL = "random:siglip-base-patch16-512"
DEFAULT_OUT = Path("demo_out")
FRONT_TOPIC = "/front/image_raw"
REAR_TOPIC = "/rear/image_raw/compressed"
START_NS = 1_700_000_000 * 10**9  # a fixed wall-clock start keeps the sample bag byte-identical between runs
FRAME_PERIOD_NS = 100_000_000  # 10 Hz per camera
TRANSPORT_DELAY_NS = 4_000_000  # log time trails the header stamp, as on a robot

# (topic, photo from skimage.data, encoding). The astronaut appears on both cameras in different encodings:
# the pair should be the most similar one in the table.
SAMPLE_SHOTS: tuple[tuple[str, str, str], ...] = (
    (FRONT_TOPIC, "astronaut", "rgb8"),
    (REAR_TOPIC, "coffee", "jpeg"),
    (FRONT_TOPIC, "chelsea", "bgr8"),
    (REAR_TOPIC, "astronaut", "png"),
    (FRONT_TOPIC, "rocket", "rgb8"),
    (REAR_TOPIC, "immunohistochemistry", "jpeg"),
    (FRONT_TOPIC, "camera", "mono8"),
    (REAR_TOPIC, "hubble_deep_field", "jpeg"),
    (FRONT_TOPIC, "coffee", "bgr8"),
    (REAR_TOPIC, "chelsea", "png"),
)
# Labels scored on every frame, and the search_bag query (each names photos that are in the bag).
DEMO_LABELS = ("a photo of an astronaut", "a cup of coffee", "a cat", "a rocket on a launch pad",
               "a black and white photo of a man with a camera")
LABELS_TOP_K = 3
SEARCH_QUERY = "an astronaut in a white suit"
SEARCH_TOP = 4
CAMERA_SIZE = {FRONT_TOPIC: (480, 640), REAR_TOPIC: (360, 480)}  # (height, width) per camera
FRAME_IDS = {FRONT_TOPIC: "front_camera_optical_frame", REAR_TOPIC: "rear_camera_optical_frame"}


@dataclass(frozen=True)
class SampleFrame:
    topic: str
    photo: str
    encoding: str
    stamp_ns: int
    log_ns: int


# ----------------------------------------------------------------------------------------------- the shards


def ensure_shards(model: str, shards_dir: Path, formats: tuple[str, ...], rebuild: bool) -> tuple[Manifest, bool]:
    """Reuse ``shards_dir`` when it holds a valid build of ``model`` (hashes checked), else build it.
    Returns (its manifest, built_now); the manifest records the hashes checked, so the encoder does not redo them."""
    return reuse_or_build(model, shards_dir, lambda manifest: manifest.text is not None, formats=formats,
                          rebuild=rebuild, progress=True, profile="pipeline3", text=True)


# ------------------------------------------------------------------------------------------- the sample bag


def sample_photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A scikit-image sample photo (shipped inside the package, no download) as RGB uint8 at ``size``."""
    from skimage import data

    photo = np.asarray(getattr(data, name)())
    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    photo = photo[..., :3].astype(np.uint8)
    height, width = size
    return cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)


def image_message(store: object, rgb: np.ndarray, encoding: str, header: object) -> tuple[str, object]:
    """(message type, message) carrying ``rgb`` in ``encoding`` (rgb8, bgr8, mono8 raw; jpeg, png compressed)."""
    if encoding in ("jpeg", "png"):
        ok, buffer = cv2.imencode(f".{'jpg' if encoding == 'jpeg' else 'png'}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok, f"OpenCV could not encode {encoding}"
        kind = "sensor_msgs/msg/CompressedImage"
        return kind, store.types[kind](header=header, format=encoding, data=buffer.reshape(-1))
    pixels = {"rgb8": lambda: rgb, "bgr8": lambda: rgb[..., ::-1],
              "mono8": lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)}[encoding]()
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    kind = "sensor_msgs/msg/Image"
    return kind, store.types[kind](header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                                   step=pixels.strides[0], data=pixels.reshape(-1))


def write_sample_bag(path: Path, storage: str = "mcap", distro: Stores = Stores.ROS2_JAZZY) -> list[SampleFrame]:
    """Write the demo's camera bag to ``path`` (must not exist); returns what it holds, in log order."""
    store = get_typestore(distro)
    header_class, time_class = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    frames: list[SampleFrame] = []
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage]) as writer:
        connections: dict[str, object] = {}
        for index, (topic, photo, encoding) in enumerate(SAMPLE_SHOTS):
            stamp_ns = START_NS + index * FRAME_PERIOD_NS // 2  # the cameras alternate: 10 Hz each
            header = header_class(stamp=time_class(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                                  frame_id=FRAME_IDS[topic])
            kind, message = image_message(store, sample_photo(photo, CAMERA_SIZE[topic]), encoding, header)
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, kind, typestore=store)
            log_ns = stamp_ns + TRANSPORT_DELAY_NS
            writer.write(connections[topic], log_ns, store.serialize_cdr(message, kind))
            frames.append(SampleFrame(topic, photo, encoding, stamp_ns, log_ns))
    return frames


# ----------------------------------------------------------------------------------------------- the table


def read_embeddings(bag: Path, topic: str = EMBEDDING_TOPIC) -> list[tuple[int, str, np.ndarray]]:
    """(header stamp ns, frame_id, unit vector) of every embedding in ``bag``, in log order (search_bag's reader)."""
    with open_bag(bag) as opened:
        embeddings = search.read_embeddings(opened, topic)
    return [(frame.sec * 10**9 + frame.nanosec, frame.frame_id, vector)
            for frame, vector in zip(embeddings.frames, embeddings.matrix, strict=True)]


def similarity_table(frames: Sequence[SampleFrame], embeddings: Sequence[tuple[int, str, np.ndarray]]) -> str:
    """A legend (one line per frame) and the cosine similarity matrix, frames matched to embeddings by stamp."""
    by_stamp = {stamp: vector for stamp, _, vector in embeddings}
    shown = [(f, by_stamp[f.stamp_ns]) for f in frames if f.stamp_ns in by_stamp]
    vectors = np.stack([v / np.linalg.norm(v) for _, v in shown]) if shown else np.zeros((0, 1))
    similarity = vectors @ vectors.T
    lines = ["  #  topic                        stamp (s)          encoding  photo"]
    for index, (frame, _) in enumerate(shown):
        lines.append(f"{index:3d}  {frame.topic:<27s}  {frame.stamp_ns / 1e9:17.3f}  {frame.encoding:<8s}  "
                     f"{frame.photo}")
    lines += ["", "cosine similarity", "     " + "".join(f"{i:>7d}" for i in range(len(shown)))]
    for index, row in enumerate(similarity):
        lines.append(f"{index:3d}  " + "".join(f"{value:7.3f}" for value in row))
    return "\n".join(lines)


def read_labels(bag: Path, topic: str = LABELS_TOPIC) -> dict[int, list[tuple[str, float]]]:
    """Header stamp ns -> the (label, probability) pairs of each Classification in ``bag``."""
    store = get_typestore(Stores.ROS2_JAZZY)
    register_classification(store)
    labels = {}
    with Reader(bag) as reader:
        chosen = [c for c in reader.connections if c.topic == topic]
        for connection, _, raw in reader.messages(chosen):
            message = store.deserialize_cdr(raw, connection.msgtype)
            labels[message.header.stamp.sec * 10**9 + message.header.stamp.nanosec] = results_of(message)
    return labels


def labels_table(frames: Sequence[SampleFrame], labels: dict[int, list[tuple[str, float]]]) -> str:
    """Each frame's photo and its most probable labels, from the output bag's Classification messages."""
    lines = [f"best labels per frame (/siglip/labels, top {LABELS_TOP_K} of {len(DEMO_LABELS)})"]
    for index, frame in enumerate(frames):
        best = ", ".join(f"{label!r} {score:.3g}" for label, score in labels.get(frame.stamp_ns, []))
        lines.append(f"{index:3d}  {frame.photo:<22s} {best or '-'}")
    return "\n".join(lines)


def report(model: str, summary: ReplaySummary, frames: Sequence[SampleFrame],
           embeddings: Sequence[tuple[int, str, np.ndarray]]) -> str:
    dims = {vector.shape[0] for _, _, vector in embeddings}
    lines = [
        "",
        "=" * 78,
        f"model            {model}",
        f"frames           {summary.frames} encoded of {len(frames)} in the bag "
        f"({len(summary.skipped)} skipped)",
        f"embedding dim    {', '.join(str(d) for d in sorted(dims)) or '-'}",
        f"throughput       {summary.frames_per_s:.2f} frames/s (mean latency {summary.mean_latency_s * 1000:.0f} ms)",
        "",
        similarity_table(frames, embeddings),
        "",
    ]
    if model.startswith("random:"):
        lines += [f"NOTE: weights are RANDOM ({model}): similarities are meaningless until you build from a real "
                  "checkpoint.", ""]
    return "\n".join(lines)


def next_steps(shards: Path, out_bag: Path) -> str:
    return f"""\
Next, with real weights and a real bag:
  # 1. build shards from a real checkpoint: a Hugging Face hub id (needs the hub) or a downloaded folder
  #    (config.json + model.safetensors + preprocessor_config.json), e.g. from `huggingface-cli download`
  .venv/bin/build_shards --model google/siglip-base-patch16-512 --out shards/siglip-b16-512 --text
  .venv/bin/build_shards --model /path/to/siglip-base-patch16-512 --out shards/siglip-b16-512 --text
  # 2. replay your own recording (rosbag2 folder, .mcap or .db3) into a new bag with embeddings
  .venv/bin/encode_bag /path/to/your_bag your_bag_siglip --shards shards/siglip-b16-512 --topics /camera/image_raw
  # 3. find frames by text in it (the shard set is recorded in the bag), with a contact sheet
  .venv/bin/search_bag your_bag_siglip "a red door" "a person on a forklift" --sheet hits.png
  # 4. or this demo on the real weights
  .venv/bin/python tools/demo.py --model /path/to/siglip-base-patch16-512
This run: shards in {shards}, output bag {out_bag} (read it with rosbags or `ros2 bag info`)."""


# ------------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tools/demo.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"checkpoint folder, hub id or random:<preset> (default: {DEFAULT_MODEL})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="working folder (default: demo_out)")
    parser.add_argument("--formats", nargs="+", choices=("onnx", "rknn"), default=["onnx"],
                        help="shard files to build (default: onnx; rknn adds minutes)")
    parser.add_argument("--backend", default="auto", help="encoder backend (default: auto)")
    parser.add_argument("--mode", default="pipeline", help="scheduler mode (default: pipeline)")
    parser.add_argument("--storage", choices=tuple(STORAGES), default="mcap", help="sample bag storage")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the shards even if a valid build exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    shards_dir = out / "shards" / _slug(args.model)
    camera_bag, encoded_bag = out / "sample_camera_bag", out / "sample_camera_bag_siglip"

    started = time.perf_counter()
    print(f"[1/4] shards (+ text tower): {args.model} -> {shards_dir}", flush=True)
    if args.model.startswith("random:"):
        print(f"      weights are RANDOM ({args.model}): the architecture is real, the numbers are not", flush=True)
    manifest, built = ensure_shards(args.model, shards_dir, tuple(args.formats), args.rebuild)
    print(f"      {'built' if built else 'reused a valid earlier build'} in {time.perf_counter() - started:.0f} s",
          flush=True)

    print(f"[2/4] sample camera bag from scikit-image photos -> {camera_bag}", flush=True)
    shutil.rmtree(camera_bag, ignore_errors=True)
    frames = write_sample_bag(camera_bag, storage=args.storage)
    print(f"      {len(frames)} frames on {FRONT_TOPIC} (rgb8, bgr8, mono8) and {REAR_TOPIC} (jpeg, png)", flush=True)

    labels_argument = " ".join(f'"{label}"' for label in DEMO_LABELS)
    print(f"[3/4] encode_bag {camera_bag} {encoded_bag} --shards {shards_dir} --force --labels {labels_argument} "
          f"--labels-top-k {LABELS_TOP_K}", flush=True)
    from rk_siglip_ros.runtime.encoder import SiglipEncoder
    from rk_siglip_ros.text import TextEncoder

    with TextEncoder.open(manifest) as text:
        label_set = text.label_set(DEMO_LABELS)
    with SiglipEncoder.open(manifest, backend=args.backend, mode=args.mode) as encoder:
        summary = encode_bag(camera_bag, encoded_bag, encoder, force=True, progress=True, labels=label_set,
                             labels_top_k=LABELS_TOP_K)
    print(format_summary(summary), flush=True)

    print(report(args.model, summary, frames, read_embeddings(encoded_bag)))
    print(labels_table(frames, read_labels(encoded_bag)), flush=True)

    sheet = out / "search_sheet.png"
    print(f"\n[4/4] search_bag {encoded_bag} \"{SEARCH_QUERY}\" --top {SEARCH_TOP} --sheet {sheet}", flush=True)
    from rk_siglip_ros.cli.search_bag import main as search_bag

    if search_bag([str(encoded_bag), SEARCH_QUERY, "--top", str(SEARCH_TOP), "--sheet", str(sheet)]) != 0:
        return 1
    if args.model.startswith("random:"):
        print(f"\nNOTE: weights are RANDOM ({args.model}): label probabilities and search ranks are meaningless until "
              "you build from a real checkpoint (with --text).")
    print(next_steps(shards_dir, encoded_bag))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return 0


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in model.replace("random:", "random-")).strip("-")


if __name__ == "__main__":
    sys.exit(main())
