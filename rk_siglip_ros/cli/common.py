"""What every command-line tool shares: the encoder options and how a tool's body is run.

Exit codes and error kinds are :mod:`rk_siglip_ros.errors`' (``EXIT_STATUS_HELP`` goes into each ``--help``): an
expected error (:class:`~rk_siglip_ros.errors.ExplainedError`, or a file that cannot be read or written) is one line
with its exit status; anything else is a bug, shown with its traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rk_siglip_ros.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    FILE_ERRORS,
    ExplainedError,
    exit_status_of,
    one_line,
)
from rk_siglip_ros.manifest import Manifest
from rk_siglip_ros.messages.image_header import DEFAULT_MAX_IMAGE_PIXELS
from rk_siglip_ros.runtime.backends import BACKENDS
from rk_siglip_ros.runtime.scheduler import MODES
from rk_siglip_ros.text import TEXT_BATCH, LabelSet

__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_STATUS_HELP", "EXIT_USAGE",
    "add_encoder_options", "add_max_image_pixels_option", "embed_labels", "one_line", "parse_cores",
    "parse_image_size", "positive_int", "run_tool",
    "text_progress",
]

DEFAULT_CORES_TEXT = "0,1,2"


def parse_cores(text: str) -> tuple[int, ...]:
    """``--cores 0,1,2`` -> (0, 1, 2): distinct non-negative integers (an argparse ``type``)."""
    try:
        cores = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated core numbers, e.g. 0,1,2") from None
    if not cores or min(cores) < 0 or len(set(cores)) != len(cores):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct core numbers >= 0, e.g. 0,1,2")
    return cores


def parse_image_size(text: str) -> tuple[int, int]:
    """``--image-size 640x480`` -> (480, 640): (height, width) of a test frame (an argparse ``type``)."""
    try:
        width, height = (int(value) for value in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be at least 1")
    return height, width


def positive_int(text: str) -> int:
    """An integer >= 1 (an argparse ``type``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 1")
    return value


def _modes(text: str) -> list[str]:
    modes = [mode.strip() for mode in text.split(",") if mode.strip()]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated subset of {','.join(MODES)}")
    return modes


def add_encoder_options(parser: argparse.ArgumentParser, *, several_shards: bool = False,
                        several_modes: bool = False) -> None:
    """``--shards``, ``--backend``, ``--mode`` (or ``--modes``) and ``--cores``, worded and checked alike in every
    tool. ``several_shards`` / ``several_modes``: bench compares sets and modes side by side."""
    parser.add_argument("--shards", required=True, type=Path, metavar="DIR", nargs="+" if several_shards else None,
                        help="shard set folder(s) built by build_shards (the folder holding manifest.json)"
                        if several_shards else "shard set built by build_shards (the folder holding manifest.json)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto: RKNN-Lite on an RK3588 with .rknn shards, else ONNX Runtime on the CPU "
                             "(default: auto); sim only simulates NPU timing and returns zero embeddings")
    if several_modes:
        parser.add_argument("--modes", type=_modes, default=list(MODES), metavar="M[,M...]",
                            help=f"comma-separated scheduler modes to compare (default: {','.join(MODES)})")
    else:
        parser.add_argument("--mode", choices=MODES, default="pipeline",
                            help="how shards use the NPU cores, as in the node (default: pipeline)")
    parser.add_argument("--cores", type=parse_cores, default=parse_cores(DEFAULT_CORES_TEXT), metavar="C[,C...]",
                        help=f"NPU cores to use (default: {DEFAULT_CORES_TEXT}; onnxruntime: worker slots)")


def add_max_image_pixels_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                        help=f"refuse images declaring more pixels, before decoding them (default: "
                             f"{DEFAULT_MAX_IMAGE_PIXELS}; 0 = no limit)")


def run_tool(prog: str, body: Callable[[], int]) -> int:
    """Run a tool's body with the shared convention: an expected error is one line with its exit status (2: the
    user's to fix, 1: a failure its message explains), interrupts 130, anything else a bug with its traceback (1)."""
    try:
        return body()
    except (ExplainedError, *FILE_ERRORS) as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return exit_status_of(error)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the convention's last resort: say it is ours, show where
        traceback.print_exc()
        print(f"{prog}: internal error ({type(error).__name__}: {one_line(error)}); this is a bug, please report it "
              "with the traceback above", file=sys.stderr)
        return EXIT_FAILED


@contextmanager
def text_progress(total: int, desc: str) -> Iterator[Callable[[int], object] | None]:
    """A progress bar's update function while the text tower embeds ``total`` texts, or None when that is one
    batch (done before a bar would be worth drawing)."""
    if total <= TEXT_BATCH:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="text", desc=desc, file=sys.stderr) as bar:
        yield bar.update


def embed_labels(shards: str | Path | Manifest, labels: list[str], prog: str) -> LabelSet:
    """The labels embedded once with the shard set's text tower (TextError: no tower, bad labels), with a progress
    bar for many and a note on stderr when a label was cut to the tokenizer's length."""
    from rk_siglip_ros.text import TextEncoder

    with TextEncoder.open(shards) as text, text_progress(len(labels), f"{prog}: labels") as progress:
        label_set = text.label_set(labels, progress=progress)
    note = label_set.truncation_note()
    if note:
        print(f"{prog}: {note}", file=sys.stderr)
    return label_set
