"""`index_bags INDEX BAG... --shards DIR`: put many bags' frame embeddings into one LanceDB index (fleet extra).

    index_bags fleet.lance recordings/*/ --shards shards/siglip-b16-512 --every 0.5
    index_bags s3://team/fleet.lance recordings/*/ --shards shards/siglip-b16-512 --ray auto
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from rk_siglip_ros.cli.common import (
    EXIT_OK,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    add_encoder_options,
    add_max_image_pixels_option,
    positive_int,
    run_tool,
)

DESCRIPTION = """\
Encode the camera frames of many rosbag2 recordings into one embedding index (LanceDB: a folder, or an object-store
URI such as s3://bucket/fleet.lance), for search_index. One row per encoded frame: the embedding, the bag (path and
content fingerprint), image topic, header stamp, frame_id, message index, a small JPEG thumbnail and the model
(checkpoint and shard-set hash). Bags made by encode_bag with the same model are not encoded again: their
embeddings are taken as they are. Incremental: a bag already in the index is skipped, so re-running over a growing
folder indexes only the new bags; an interrupted run resumes where it stopped, without duplicate or half-written
rows. Past 50000 rows the index gets an IVF-PQ index for fast approximate search."""

EPILOG = """\
examples:
  index_bags fleet.lance recordings/*/ --shards shards/siglip-b16-512 --every 0.5
  index_bags fleet.lance recordings/*/ --shards shards/siglip-b16-512 --ray local          # all CPUs, one worker each
  index_bags s3://team/fleet.lance /mnt/bags/*/ --shards /mnt/shards/siglip --ray ray-head:6379
A bag that cannot be read (corrupt, not a bag) is one line and the others are indexed (exit status 2 then).
With --ray the workers open the bags and the shard set by the paths given: on several machines, a shared file
system. One index_bags at a time per index.

""" + EXIT_STATUS_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="index_bags", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", metavar="INDEX", help="index folder or object-store URI (created if missing)")
    parser.add_argument("bags", metavar="BAG", nargs="+", help="rosbag2 folders or .mcap/.db3 files")
    add_encoder_options(parser)
    parser.add_argument("--every", type=float, default=0.0, metavar="SECONDS",
                        help="at most one frame per topic every SECONDS of header time (default: 0 = every frame)")
    parser.add_argument("--topics", nargs="+", metavar="T", help="image topics (default: every image topic)")
    parser.add_argument("--ray", metavar="local|auto|ADDRESS",
                        help="encode on Ray: local = a private cluster of this machine's CPUs (127.0.0.1 only); "
                             "auto = the cluster this machine belongs to, else a private one; or a cluster address "
                             "(default: encode in this process)")
    parser.add_argument("--ray-workers", type=positive_int, metavar="N",
                        help="Ray workers, one encoder each (default: one per CPU of the cluster)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="ONNX Runtime threads per encoder session (default: ONNX Runtime's own in-process, "
                             "1 per Ray worker)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (the summary still prints)")
    add_max_image_pixels_option(parser)
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: the bag being encoded is not written


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    return run_tool("index_bags", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from rk_siglip_ros.fleet import FleetError, require_fleet_extra

    require_fleet_extra("index_bags")
    from rk_siglip_ros.fleet.indexing import FAILED, EncoderOptions, index_bags
    from rk_siglip_ros.fleet.rows import Sampling
    from rk_siglip_ros.manifest import load_manifest

    if args.every < 0:
        raise FleetError(f"--every {args.every}: need 0 (every frame) or more seconds")
    if args.ray_workers is not None and args.ray is None:
        raise FleetError("--ray-workers needs --ray")
    manifest = load_manifest(args.shards, verify=())
    sampling = Sampling(every_s=args.every, topics=tuple(args.topics) if args.topics else None,
                        max_image_pixels=args.max_image_pixels)
    options = EncoderOptions(backend=args.backend, mode=args.mode, cores=tuple(args.cores), threads=args.threads)
    summary = index_bags(args.index, args.bags, manifest, sampling, options, ray=args.ray,
                         ray_workers=args.ray_workers, progress=not args.no_progress)
    print(summary.format())
    return EXIT_USAGE if summary.count(FAILED) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
