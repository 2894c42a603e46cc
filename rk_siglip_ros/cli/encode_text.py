"""`encode_text`: embed texts with a shard set's text tower (built with `build_shards --text`).

    encode_text --shards shards/siglip-b16-512 "a red door" "a forklift" --out text.npy

writes an (L, D) float32 array of L2-normalised text embeddings, row i for the i-th text, comparable with the
image embeddings of the same shard set (cosine = dot product).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
    encoder = TextEncoder.open(args.shards)
    with encoder, text_progress(len(texts), "encode_text") as progress:
        encoded = encoder.label_set(texts, limit=None, progress=progress)
    note = encoded.truncation_note()
    if note:
        print(f"encode_text: {note}", file=sys.stderr)
    save_npy(args.out, encoded.embeddings)
    print(f"encode_text: {len(texts)} text(s) -> {args.out} {encoded.embeddings.shape} float32")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
