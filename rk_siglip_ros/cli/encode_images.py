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

from ..backends import BACKENDS
from ..scheduler import MODES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="encode_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, type=Path, help="shard set folder (holds manifest.json)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto = rknnlite on an RK3588 with .rknn files, else onnxruntime (default: auto)")
    parser.add_argument("--mode", default="pipeline", choices=MODES,
                        help="how shards use the cores (default: pipeline)")
    parser.add_argument("--cores", default="0,1,2", help="comma-separated NPU cores (default: 0,1,2)")
    parser.add_argument("--out", required=True, type=Path, help="output .npy file: N x D float32")
    parser.add_argument("images", nargs="+", type=Path, help="image files (any format PIL reads)")
    return parser.parse_args(argv)


def read_image(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (grey, palette and alpha images are converted, as HF processors do)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot read as an image ({error})") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cores = tuple(int(core) for core in args.cores.split(",") if core.strip())
    except ValueError:
        print(f"encode_images: --cores {args.cores!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    try:
        images = [read_image(path) for path in args.images]
    except ValueError as error:
        print(f"encode_images: {error}", file=sys.stderr)
        return 2
    from ..backends import BackendError
    from ..encoder import SiglipEncoder
    from ..manifest import ManifestError

    try:
        encoder = SiglipEncoder.open(args.shards, backend=args.backend, mode=args.mode, cores=cores)
    except (ManifestError, BackendError, ValueError) as error:
        print(f"encode_images: {error}", file=sys.stderr)
        return 1
    with encoder:
        start = time.perf_counter()
        embeddings = encoder.encode_batch(images)
        elapsed = time.perf_counter() - start
        backend = encoder.backend.name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, embeddings.astype(np.float32))
    print(f"encode_images: {len(images)} image(s) -> {args.out} {embeddings.shape} float32 "
          f"({backend}, {args.mode}, {elapsed:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
