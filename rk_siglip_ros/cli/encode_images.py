"""`encode_images`: embed image files with a shard set — the first "does my shard set work" check.

    encode_images --shards shards/siglip-b16-512 photo1.jpg photo2.png --out emb.npy

writes an (N, D) float32 array of L2-normalised embeddings, row i for the i-th image argument. With a text tower
(``build_shards --text``), ``--labels "a cat" "a dog" --scores scores.npy`` also writes the (N, L) float32 SigLIP
probabilities sigmoid(logit_scale * cos + logit_bias), image i against label j, in label order.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rk_siglip_ros.atomic_file import write_staged
from rk_siglip_ros.cli.common import (
    EXIT_OK,
    EXIT_STATUS_HELP,
    add_encoder_options,
    add_max_image_pixels_option,
    embed_labels,
    run_tool,
)
from rk_siglip_ros.messages.camera_frames import BadFrame
from rk_siglip_ros.messages.image_header import ImageHeaderError, ImageTooLargeError, check_declared_size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encode_images", description=__doc__.split("\n\n")[0],
                                     epilog=EXIT_STATUS_HELP)
    add_encoder_options(parser)
    parser.add_argument("--out", required=True, type=Path, help="output .npy file: N x D float32")
    add_max_image_pixels_option(parser)
    parser.add_argument("--labels", nargs="+", metavar="TEXT", help="labels to score every image against (needs a "
                        "shard set built with --text, and --scores); put the images before --labels")
    parser.add_argument("--scores", type=Path, metavar="FILE.npy", help="output .npy file: N x L float32 "
                        "probabilities (with --labels)")
    parser.add_argument("images", nargs="+", type=Path, help="image files (any format PIL reads)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.labels is None) != (args.scores is None):
        parser.error("--labels and --scores go together: pass both, or neither")
    if args.scores is not None and args.scores.resolve() == args.out.resolve():
        parser.error("--scores and --out name the same file; give each its own")
    return args


def read_image(path: Path, max_pixels: int = 0) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (grey, palette and alpha images are converted, as HF processors do).
    Raises BadFrame for a file that is not an image or declares more than ``max_pixels`` (0 = no limit)."""
    from PIL import Image, UnidentifiedImageError

    try:
        check_declared_size(path.read_bytes(), max_pixels)  # before decoding: a bomb never allocates
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except ImageTooLargeError as error:
        raise BadFrame(f"{path}: {error}") from None
    except (ImageHeaderError, OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise BadFrame(f"{path}: cannot read as an image ({error})") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool("encode_images", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    images = [read_image(path, args.max_image_pixels) for path in args.images]
    from rk_siglip_ros.manifest import load_manifest
    from rk_siglip_ros.runtime.encoder import SiglipEncoder

    manifest = load_manifest(args.shards, verify=())  # read once, for the labels and the encoder
    # Bad labels or a shard set without a text tower: refused before any image is encoded.
    labels = embed_labels(manifest, args.labels, "encode_images") if args.labels is not None else None
    with SiglipEncoder.open(manifest, backend=args.backend, mode=args.mode, cores=args.cores) as encoder:
        start = time.perf_counter()
        embeddings = encoder.encode_batch(images)
        elapsed = time.perf_counter() - start
        backend = encoder.backend.name
    outputs = {args.out: embeddings.astype(np.float32)}
    if labels is not None:
        outputs[args.scores] = labels.probabilities(embeddings).reshape(len(images), len(labels))
    save_all(outputs)
    print(f"encode_images: {len(images)} image(s) -> {args.out} {embeddings.shape} float32 "
          f"({backend}, {args.mode}, {elapsed:.2f} s)")
    if labels is not None:
        print(f"encode_images: {len(labels)} label(s) -> {args.scores} {outputs[args.scores].shape} float32 "
              "probabilities")
    return EXIT_OK


def save_all(arrays: dict[Path, np.ndarray]) -> None:
    """Write every array whole, or none: each goes to a temp file first, all are renamed only when all are written."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, array in arrays.items():
            staged.append((write_staged(path, lambda stream, array=array: np.save(stream, array)), path))
        for temporary, path in staged:
            temporary.replace(path)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
