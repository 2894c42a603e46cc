"""`encode_images`: embed image files with a shard set — the first "does my shard set work" check.

    encode_images --shards shards/siglip-b16-512 photo1.jpg photo2.png --out emb.npy

writes an (N, D) float32 array of L2-normalised embeddings, row i for the i-th image argument.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..camera_frames import BadFrame
from ..image_header import ImageHeaderError, ImageTooLargeError, check_declared_size
from .common import EXIT_OK, EXIT_STATUS_HELP, add_encoder_options, add_max_image_pixels_option, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encode_images", description=__doc__.split("\n\n")[0],
                                     epilog=EXIT_STATUS_HELP)
    add_encoder_options(parser)
    parser.add_argument("--out", required=True, type=Path, help="output .npy file: N x D float32")
    add_max_image_pixels_option(parser)
    parser.add_argument("images", nargs="+", type=Path, help="image files (any format PIL reads)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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
    from ..encoder import SiglipEncoder

    with SiglipEncoder.open(args.shards, backend=args.backend, mode=args.mode, cores=args.cores) as encoder:
        start = time.perf_counter()
        embeddings = encoder.encode_batch(images)
        elapsed = time.perf_counter() - start
        backend = encoder.backend.name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, embeddings.astype(np.float32))
    print(f"encode_images: {len(images)} image(s) -> {args.out} {embeddings.shape} float32 "
          f"({backend}, {args.mode}, {elapsed:.2f} s)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
