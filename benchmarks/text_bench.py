"""Text-side benchmark for `make bench`: SigLIP-B/16@512 with its text tower (random weights, full size), on the CPU.

(a) the text tower (ONNX Runtime, CPU): ms per label for a batch of 100 labels, tokenizer included and alone;
(b) per-frame label scoring at 1000 labels (an (L x D) @ (D) product, sigmoid and top 5) against the frame's
    encoder time, measured here on ONNX Runtime and predicted for the RK3588 NPU by the sim timing profile
    (goal: < 1 % of the frame's encoder time);
(c) search_bag over a bag of 10 000 embeddings (written here, 768-d): frames/s for reading the bag, embedding the
    query and ranking every frame.

The shard set is built once into bench_out/text/ (ONNX only, --text) and reused while it verifies. Goals missed
are printed, never asserted. ``--model random:tiny`` runs the same steps in seconds (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "random:siglip-base-patch16-512"
SCORING_GOAL = 0.01  # label scoring at 1000 labels, as a fraction of one frame's encoder time
WORDS = ("red green blue small large old new wooden metal open closed broken wet dry dark bright empty full "
         "door person forklift pallet robot shelf box cart ladder window truck chair table cable bucket sign "
         "light wall floor stairs helmet vest glove tool").split()


def shard_set(model: str, out: Path) -> object:
    """The text-capable ONNX shard set for ``model`` in ``out``, built unless a valid one is there."""
    sys.path.insert(0, str(ROOT / "tools"))  # developer-only modules, not installed with the package
    from shard_reuse import reuse_or_build

    started = time.perf_counter()
    manifest, built = reuse_or_build(model, out, lambda manifest: manifest.text is not None, profile="pipeline3",
                                     text=True)
    print(f"  built {out} in {time.perf_counter() - started:.0f} s" if built else f"  reusing {out}", flush=True)
    return manifest


def label_texts(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct labels like a robot's vocabulary ("a wooden pallet near a red door")."""
    generator = np.random.default_rng(seed)
    labels: dict[str, None] = {}
    while len(labels) < count:
        a, b, c, d = generator.choice(WORDS, 4)
        labels[f"a {a} {b} near a {c} {d} #{len(labels)}"] = None
    return list(labels)


def median_s(run: Callable[[], object], reps: int) -> float:
    run()  # warm-up: first ORT run allocates
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def text_tower(manifest: object, reps: int) -> dict[str, float]:
    from rk_siglip_ros.text import TextEncoder

    labels = label_texts(100)
    with TextEncoder.open(manifest) as text:
        tokens = text.tokenize(labels)
        tokenize_s = median_s(lambda: text.tokenize(labels), reps)
        tower_s = median_s(lambda: text.encode_tokens(tokens), reps)
    return {"labels": 100, "ms_per_label": 1000 * (tokenize_s + tower_s) / 100,
            "tokenizer_ms_per_label": 1000 * tokenize_s / 100, "tower_ms_per_label": 1000 * tower_s / 100}


def label_scoring(manifest: object, frames: int, labels: int) -> dict[str, float]:
    """Per-frame cost of scoring ``labels`` labels vs the encoder's time for that frame."""
    from rk_siglip_ros.runtime.encoder import SiglipEncoder
    from rk_siglip_ros.text import TextEncoder

    with TextEncoder.open(manifest) as text:
        started = time.perf_counter()
        label_set = text.label_set(label_texts(labels))
        embed_all_s = time.perf_counter() - started
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with SiglipEncoder.open(manifest, backend="onnxruntime", mode="sequential") as encoder:
        embedding = encoder.encode(image)
        encode_s = median_s(lambda: encoder.encode(image), max(1, frames))
    score_s = median_s(lambda: label_set.top_k(embedding, 5), 200)
    with SiglipEncoder.open(manifest, backend="sim", mode="pipeline") as simulated:
        simulated.encode(image)  # warm-up, as for ONNX Runtime
        npu_s = _sim_frame_s(simulated, image)
    return {"labels": labels, "embed_labels_s": embed_all_s, "score_ms": 1000 * score_s,
            "encode_ms_onnxruntime": 1000 * encode_s, "fraction_onnxruntime": score_s / encode_s,
            "encode_ms_npu_sim": 1000 * npu_s, "fraction_npu_sim": score_s / npu_s}


def _sim_frame_s(encoder: object, image: np.ndarray) -> float:
    """The sim backend's predicted latency of one frame on the RK3588 (sleeps, so measured as wall time)."""
    result = encoder.submit(image).result()
    return float(result.latency_s)


def write_embedding_bag(path: Path, count: int, width: int) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from rk_siglip_ros.messages.embedding_msg import embedding_fields

    store = get_typestore(Stores.ROS2_HUMBLE)
    image, header, stamp = (store.types[name] for name in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                           "builtin_interfaces/msg/Time"))
    vectors = np.random.default_rng(1).normal(size=(count, width)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/siglip/embeddings", "sensor_msgs/msg/Image", typestore=store)
        for index, vector in enumerate(vectors):
            ns = 1_700_000_000 * 10**9 + index * 33_333_333
            message = image(header=header(stamp=stamp(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="cam"),
                            **embedding_fields(vector))
            writer.write(connection, ns, store.serialize_cdr(message, "sensor_msgs/msg/Image"))


def search(manifest: object, frames: int) -> dict[str, float]:
    from rk_siglip_ros.bag.io import open_bag
    from rk_siglip_ros.bag.search import rank, read_embeddings
    from rk_siglip_ros.text import TextEncoder

    with tempfile.TemporaryDirectory(prefix="text_bench_") as folder:
        bag_path = Path(folder) / "embeddings"
        write_embedding_bag(bag_path, frames, manifest.model.embedding_dim)
        started = time.perf_counter()
        with open_bag(bag_path) as bag:
            embeddings = read_embeddings(bag)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        with TextEncoder.open(manifest) as text:
            queries = text.label_set(["a red door"])
        query_s = time.perf_counter() - started
        started = time.perf_counter()
        rank(embeddings, queries, 5)
        rank_s = time.perf_counter() - started
    total = read_s + query_s + rank_s
    return {"frames": frames, "frames_per_s": frames / total, "read_s": read_s, "query_s": query_s,
            "rank_s": rank_s, "read_and_rank_frames_per_s": frames / (read_s + rank_s)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "text")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the 100-label batch")
    parser.add_argument("--frames", type=int, default=3, help="frames encoded to time the image encoder")
    parser.add_argument("--labels", type=int, default=1000, help="labels for the per-frame scoring cost")
    parser.add_argument("--search-frames", type=int, default=10_000, help="embeddings in the search_bag bag")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    print(f"text bench: {args.model} (shard set {args.out})", flush=True)
    manifest = shard_set(args.model, args.out / args.model.replace(":", "-"))
    results = {"model": args.model, "text_tower": text_tower(manifest, args.reps),
               "label_scoring": label_scoring(manifest, args.frames, args.labels),
               "search_bag": search(manifest, args.search_frames)}
    tower, scoring, found = results["text_tower"], results["label_scoring"], results["search_bag"]
    print(f"(a) text tower, batch of {tower['labels']}: {tower['ms_per_label']:.2f} ms per label "
          f"(tokenizer {tower['tokenizer_ms_per_label']:.3f} ms, tower {tower['tower_ms_per_label']:.2f} ms)")
    print(f"(b) label scoring at {scoring['labels']} labels: {scoring['score_ms']:.3f} ms per frame "
          f"= {100 * scoring['fraction_onnxruntime']:.3f} % of the encoder on ONNX Runtime here "
          f"({scoring['encode_ms_onnxruntime']:.0f} ms), {100 * scoring['fraction_npu_sim']:.3f} % of the predicted "
          f"RK3588 NPU frame ({scoring['encode_ms_npu_sim']:.0f} ms); goal < {100 * SCORING_GOAL:.0f} %: "
          f"{'met' if max(scoring['fraction_onnxruntime'], scoring['fraction_npu_sim']) < SCORING_GOAL else 'MISSED'}"
          f" (embedding the {scoring['labels']} labels once: {scoring['embed_labels_s']:.1f} s)")
    print(f"(c) search_bag over {found['frames']} embeddings: {found['frames_per_s']:.0f} frames/s end to end "
          f"(read {found['read_s']:.2f} s, query {found['query_s']:.2f} s, rank {1000 * found['rank_s']:.1f} ms; "
          f"read + rank {found['read_and_rank_frames_per_s']:.0f} frames/s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
