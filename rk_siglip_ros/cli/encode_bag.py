"""`encode_bag IN OUT --shards DIR`: replay a recorded rosbag2 through the encoder into a new bag.

Thin layer over :mod:`rk_siglip_ros.bag`: argument parsing, one-line errors, a progress bar, the summary; exit codes
as every tool (:mod:`rk_siglip_ros.cli.common`).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from rk_siglip_ros.bag import (
    EMBEDDING_TOPIC,
    STORAGES,
    TYPESTORES,
    ReplayPlan,
    check_request,
    format_summary,
    replay,
)
from rk_siglip_ros.bag.errors import BagError
from rk_siglip_ros.bag.replay import DEFAULT_TOP_K
from rk_siglip_ros.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STATUS_HELP,
    add_encoder_options,
    add_max_image_pixels_option,
    embed_labels,
    one_line,
    run_tool,
)
from rk_siglip_ros.errors import FILE_ERRORS, RunFailedError, UserError
from rk_siglip_ros.messages.labels_msg import LABELS_TOPIC
from rk_siglip_ros.text import TextError, check_texts

DESCRIPTION = """\
Replay a recorded rosbag2 (MCAP or sqlite3, any ROS 2 distro) through the SigLIP encoder, offline.
Every image message (sensor_msgs/Image or CompressedImage) on the chosen topics is encoded; OUT gets every
original topic copied through unchanged plus one sensor_msgs/Image (32FC1, 1 x D, L2-normalised) per frame on
the embedding topic, with the source frame's header (stamp, frame_id) and log time. Frames that cannot be
decoded, or that the encoder gives no usable embedding for (NaN/inf), are skipped and counted; 10 of the latter
in a row end the run. With --labels (a shard set built with --text), OUT also gets one
vision_msgs/Classification per frame on the labels topic: the top-k labels with their SigLIP probabilities, same
header. OUT appears only when the run completes."""

EPILOG = """\
examples:
  encode_bag recording/ recording_emb/ --shards shards/siglip-b16-512
  encode_bag run.mcap out/ --shards shards/default --topics /front/image_raw /rear/image_raw/compressed
  encode_bag in/ out/ --shards shards/default --backend onnxruntime --mode replicas --storage sqlite3 --force
  encode_bag in/ out/ --shards shards/default --labels "a person" "a forklift" "an open door" --labels-top-k 2
Read the embeddings back with rosbags: rk_siglip_ros.messages.embedding_msg.embedding_from_message(msg).
A killed run (SIGKILL, power loss) leaves a hidden .OUT.partial-* folder; the next run into the same folder removes
it once its owner process is gone. A recording cut off mid-write is refused with how to recover it.

""" + EXIT_STATUS_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encode_bag", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", type=Path, help="input rosbag2: a bag folder or a .mcap/.db3 file")
    parser.add_argument("output", metavar="OUT", type=Path, help="output rosbag2 folder (must not exist)")
    add_encoder_options(parser)
    parser.add_argument("--topics", nargs="+", metavar="T",
                        help="image topics to encode (default: every Image/CompressedImage topic)")
    parser.add_argument("--storage", choices=tuple(STORAGES),
                        help="output storage (default: the same as the input)")
    parser.add_argument("--typestore", choices=("auto", *TYPESTORES), default="auto",
                        help="message types for connections the bag does not define itself (default: auto = the "
                             "distro the bag records, else humble)")
    parser.add_argument("--embedding-topic", default=EMBEDDING_TOPIC,
                        help=f"output topic for the embeddings (default: {EMBEDDING_TOPIC})")
    parser.add_argument("--labels", nargs="+", metavar="TEXT",
                        help="labels to score every frame against (shard set built with --text); writes "
                             f"vision_msgs/Classification to --labels-topic (default {LABELS_TOPIC})")
    parser.add_argument("--labels-top-k", type=int, default=DEFAULT_TOP_K, metavar="K",
                        help="labels per Classification, most probable first (default: %(default)s)")
    parser.add_argument("--labels-topic", default=LABELS_TOPIC, help="output topic for the labels (default: "
                        "%(default)s)")
    parser.add_argument("--every", type=float, default=0.0, metavar="SECONDS",
                        help="encode at most one frame per topic every SECONDS of header time; the others are "
                             "copied through without an embedding (default: 0 = every frame)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists (only a bag or a file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary still prints)")
    add_max_image_pixels_option(parser)
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so SIGTERM cleans up the partial output like Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    return run_tool("encode_bag", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.labels is not None:  # cheapest first: the texts themselves
        check_texts(args.labels, "labels")
        if args.labels_top_k < 1:
            raise TextError(f"--labels-top-k {args.labels_top_k}: need at least 1")
    if args.every < 0:
        raise BagError(f"--every {args.every}: need 0 (every frame) or more seconds")
    try:
        # Everything about the bags is checked, once, before the (slower) encoder starts; the plan keeps IN open.
        plan = check_request(args.input, args.output, topics=args.topics, storage=args.storage,
                             typestore=args.typestore, embedding_topic=args.embedding_topic, force=args.force,
                             labels_topic=args.labels_topic if args.labels is not None else None)
    except KeyboardInterrupt:
        print("encode_bag: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    with plan:
        plan.every_s = args.every
        return _encode(plan, args)


def _encode(plan: ReplayPlan, args: argparse.Namespace) -> int:
    try:
        from rk_siglip_ros.manifest import load_manifest
        from rk_siglip_ros.runtime.encoder import (
            SiglipEncoder,  # after the cheap checks: it loads ONNX Runtime / RKNN-Lite
        )

        manifest = load_manifest(args.shards, verify=())  # read once, for the labels and the encoder
        if args.labels is not None:
            plan.labels, plan.labels_top_k = embed_labels(manifest, args.labels, "encode_bag"), args.labels_top_k
        encoder = SiglipEncoder.open(manifest, backend=args.backend, mode=args.mode, cores=args.cores)
    except KeyboardInterrupt:
        print("encode_bag: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.backend == "sim":
        print("encode_bag: note: --backend sim simulates NPU timing only; the embeddings it writes are zeros",
              file=sys.stderr)
    try:
        with encoder:
            summary = replay(plan, encoder, progress=not args.no_progress, max_image_pixels=args.max_image_pixels)
    except KeyboardInterrupt:
        print(f"encode_bag: interrupted; {args.output} was not written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, *FILE_ERRORS):
        raise  # the shared one-line message, exit 2
    except (RunFailedError, RuntimeError, OSError) as error:  # an encoder or I/O failure mid-run: no partial output
        print(f"encode_bag: failed, {args.output} was not written: {type(error).__name__}: {one_line(error)}",
              file=sys.stderr)
        return EXIT_FAILED
    print(format_summary(summary))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
