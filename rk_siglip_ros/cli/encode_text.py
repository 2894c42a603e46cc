"""`encode_text`: embed texts with a shard set's text tower (built with `build_shards --text`).

    encode_text --shards shards/siglip-b16-512 "a red door" "a forklift" --out text.npy

writes an (L, D) float32 array of L2-normalised text embeddings, row i for the i-th text, comparable with the
image embeddings of the same shard set (cosine = dot product). With --for-bag BAG it first checks that BAG's
embeddings come from the same model (the VisionInfo encode_bag writes, or the node's, recorded) and refuses if not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rk_siglip_ros.atomic_file import write_atomically
from rk_siglip_ros.cli.common import EXIT_OK, EXIT_STATUS_HELP, run_tool, text_progress

EPILOG = """\
Texts are tokenised exactly as the checkpoint's Hugging Face tokenizer does (SigLIP: lowercase, punctuation
removed, padded to 64 tokens); longer texts are cut to 64 tokens, with a note. Nothing is written unless all is.

""" + EXIT_STATUS_HELP


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="encode_text", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, type=Path, metavar="DIR",
                        help="shard set folder built with --text (holds manifest.json)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.npy", help="output .npy file: L x D float32")
    parser.add_argument("--for-bag", type=Path, metavar="BAG",
                        help="refuse unless BAG's embeddings (its siglip/vision_info) come from the shard set's model")
    parser.add_argument("--embedding-topic", metavar="T",
                        help="with --for-bag: the embedding topic (default: the bag's metadata, else "
                             "/siglip/embeddings)")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed, in order (distinct, non-empty)")
    return parser.parse_args(argv)


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` whole or not at all (a temp file beside it, renamed into place)."""
    write_atomically(path, lambda stream: np.save(stream, array))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool("encode_text", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from rk_siglip_ros.text import TextEncoder, TextError, check_texts

    if args.out.suffix != ".npy":
        raise TextError(f"--out {args.out}: expected a .npy file name")
    texts = check_texts(args.texts, "texts", limit=None)  # refused as "texts", before the text tower opens
    if args.for_bag is not None:  # before the text tower opens: a refusal costs nothing
        from rk_siglip_ros.manifest import load_manifest

        _check_bag_model(args.for_bag, args.embedding_topic, load_manifest(args.shards, verify=()))
    encoder = TextEncoder.open(args.shards)
    with encoder, text_progress(len(texts), "encode_text") as progress:
        encoded = encoder.label_set(texts, limit=None, progress=progress)
    note = encoded.truncation_note()
    if note:
        print(f"encode_text: {note}", file=sys.stderr)
    save_npy(args.out, encoded.embeddings)
    print(f"encode_text: {len(texts)} text(s) -> {args.out} {encoded.embeddings.shape} float32")
    return EXIT_OK


def _check_bag_model(bag_path: Path, embedding_topic: str | None, manifest: Any) -> None:
    """ModelMismatchError (one line) unless the bag's VisionInfo names ``manifest``'s model; BagError without one."""
    from rk_siglip_ros.bag.errors import BagError
    from rk_siglip_ros.bag.io import open_bag
    from rk_siglip_ros.bag.model import bag_vision_info, check_bag_model
    from rk_siglip_ros.bag.replay import EMBEDDING_TOPIC, META_EMBEDDING_TOPIC
    from rk_siglip_ros.bag.search import custom_data
    from rk_siglip_ros.messages.vision_info import vision_info_topic

    with open_bag(bag_path) as bag:
        topic = embedding_topic or custom_data(bag.reader).get(META_EMBEDDING_TOPIC) or EMBEDDING_TOPIC
        content = bag_vision_info(bag, topic)
    if content is None:
        raise BagError(f"{bag_path} has no {vision_info_topic(topic)}, so which model made its embeddings is "
                       "unknown; re-encode it with encode_bag, or record the node's siglip/vision_info with them")
    check_bag_model(content, manifest, topic)


if __name__ == "__main__":
    sys.exit(main())
