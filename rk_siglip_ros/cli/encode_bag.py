"""`encode_bag IN OUT --shards DIR`: replay a recorded rosbag2 through the encoder into a new bag.

Thin layer over :mod:`rk_siglip_ros.bag`: argument parsing, one-line errors (exit 2), a progress bar, the summary.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ..backends import BACKENDS
from ..bag import (
    EMBEDDING_TOPIC,
    STORAGES,
    TYPESTORES,
    BagError,
    ReplayPlan,
    check_request,
    format_summary,
    replay,
)
from ..scheduler import MODES
from .common import one_line

# A request that cannot start (bad bags, shards, backend): one line, exit 2.
SETUP_ERRORS = (BagError, ValueError, OSError, RuntimeError, ImportError)

DESCRIPTION = """\
Replay a recorded rosbag2 (MCAP or sqlite3, any ROS 2 distro) through the SigLIP encoder, offline.
Every image message (sensor_msgs/Image or CompressedImage) on the chosen topics is encoded; OUT gets every
original topic copied through unchanged plus one sensor_msgs/Image (32FC1, 1 x D, L2-normalised) per frame on
the embedding topic, with the source frame's header (stamp, frame_id) and log time. Frames that cannot be
decoded are skipped and counted. OUT appears only when the run completes."""

EPILOG = """\
examples:
  encode_bag recording/ recording_emb/ --shards shards/siglip-b16-512
  encode_bag run.mcap out/ --shards shards/default --topics /front/image_raw /rear/image_raw/compressed
  encode_bag in/ out/ --shards shards/default --backend onnxruntime --mode replicas --storage sqlite3 --force
Read the embeddings back with rosbags: rk_siglip_ros.embedding_msg.embedding_from_message(msg)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encode_bag", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", type=Path, help="input rosbag2: a bag folder or a .mcap/.db3 file")
    parser.add_argument("output", metavar="OUT", type=Path, help="output rosbag2 folder (must not exist)")
    parser.add_argument("--shards", required=True, type=Path, metavar="DIR",
                        help="shard set built by build_shards (the folder holding manifest.json)")
    parser.add_argument("--topics", nargs="+", metavar="T",
                        help="image topics to encode (default: every Image/CompressedImage topic)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto: RKNN-Lite on an RK3588, else ONNX Runtime on the CPU (default: auto); sim only "
                             "simulates NPU timing and writes zero embeddings")
    parser.add_argument("--mode", choices=MODES, default="pipeline",
                        help="how shards use the cores, as in the node (default: pipeline)")
    parser.add_argument("--storage", choices=tuple(STORAGES),
                        help="output storage (default: the same as the input)")
    parser.add_argument("--typestore", choices=("auto", *TYPESTORES), default="auto",
                        help="message types for connections the bag does not define itself (default: auto = the "
                             "distro the bag records, else humble)")
    parser.add_argument("--embedding-topic", default=EMBEDDING_TOPIC,
                        help=f"output topic for the embeddings (default: {EMBEDDING_TOPIC})")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists (only a bag or a file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary still prints)")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so SIGTERM cleans up the partial output like Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Everything about the bags is checked, once, before the (slower) encoder starts; the plan keeps IN open.
        plan = check_request(args.input, args.output, topics=args.topics, storage=args.storage,
                             typestore=args.typestore, embedding_topic=args.embedding_topic, force=args.force)
    except SETUP_ERRORS as error:
        return _fail(error)
    except KeyboardInterrupt:
        print("encode_bag: interrupted; nothing written", file=sys.stderr)
        return 130
    with plan:
        return _encode(plan, args)


def _encode(plan: ReplayPlan, args: argparse.Namespace) -> int:
    try:
        from ..encoder import SiglipEncoder  # after the cheap checks: it loads ONNX Runtime / RKNN-Lite

        encoder = SiglipEncoder.open(args.shards, backend=args.backend, mode=args.mode)
    except SETUP_ERRORS as error:
        return _fail(error)
    except KeyboardInterrupt:
        print("encode_bag: interrupted; nothing written", file=sys.stderr)
        return 130
    if args.backend == "sim":
        print("encode_bag: note: --backend sim simulates NPU timing only; the embeddings it writes are zeros",
              file=sys.stderr)
    try:
        with encoder:
            summary = replay(plan, encoder, progress=not args.no_progress)
    except BagError as error:
        return _fail(error)
    except KeyboardInterrupt:
        print(f"encode_bag: interrupted; {args.output} was not written", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - an encoder failure mid-run: one line, no partial output
        print(f"encode_bag: failed, {args.output} was not written: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


def _fail(error: BaseException) -> int:
    print(f"encode_bag: error: {one_line(error)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
