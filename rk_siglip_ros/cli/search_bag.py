"""`search_bag BAG QUERY...`: rank the frames of a bag holding /siglip/embeddings by text queries.

    search_bag recording_emb/ "a red door" "a person on a forklift" --top 5 --sheet hits.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rk_siglip_ros.bag.search import DEFAULT_TOP
from rk_siglip_ros.cli.common import EXIT_OK, EXIT_STATUS_HELP, run_tool, text_progress

DESCRIPTION = """\
Rank the frames of a rosbag2 that holds /siglip/embeddings (written by encode_bag, or recorded from encoder_node)
by each text query: the probability SigLIP gives that the text fits the frame, sigmoid(logit_scale * cos +
logit_bias). Prints rank, stamp, image topic, frame_id and probability per query; --sheet also writes a contact
sheet PNG of the top frames (thumbnails from the bag's image topics, matched by header stamp and frame_id)."""

EPILOG = """\
The queries are embedded with the text tower of the shard set that made the embeddings: the one encode_bag
recorded in the bag's metadata or the node's /siglip/vision_info names, or --shards DIR (built with --text).
Embeddings of another model than the shard set's (the bag's VisionInfo says which) are refused.
A bad request is one line and writes nothing.

""" + EXIT_STATUS_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search_bag", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", metavar="BAG", type=Path, help="rosbag2 folder or .mcap/.db3 file with embeddings")
    parser.add_argument("queries", metavar="QUERY", nargs="+", help="text queries, e.g. \"a red door\"")
    parser.add_argument("--shards", type=Path, metavar="DIR",
                        help="shard set with a text tower (default: the one recorded in the bag's metadata)")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K",
                        help="frames per query (default: %(default)s)")
    parser.add_argument("--sheet", type=Path, metavar="FILE.png", help="also write a contact sheet of the top frames")
    parser.add_argument("--embedding-topic", metavar="T",
                        help="topic holding the embeddings (default: the bag's metadata, else /siglip/embeddings)")
    parser.add_argument("--typestore", default="auto", help="message types for connections the bag does not define "
                        "(default: auto)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("search_bag", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from rk_siglip_ros.bag.errors import BagError
    from rk_siglip_ros.bag.io import open_bag
    from rk_siglip_ros.bag.model import bag_vision_info, check_bag_model, recorded_shards
    from rk_siglip_ros.bag.search import (
        check_same_shard_set,
        format_hits,
        frame_images,
        rank,
        read_embeddings,
        shards_for,
        write_contact_sheet,
    )
    from rk_siglip_ros.manifest import load_manifest
    from rk_siglip_ros.text import TextEncoder, check_texts

    queries = check_texts(args.queries, "queries", limit=None)
    if args.top < 1:
        raise BagError(f"--top {args.top}: need at least 1")
    if args.sheet is not None and args.sheet.suffix.lower() != ".png":
        raise BagError(f"--sheet {args.sheet}: expected a .png file name")
    with open_bag(args.bag, args.typestore) as bag:
        embeddings = read_embeddings(bag, args.embedding_topic)
        vision_info = bag_vision_info(bag, embeddings.topic)
        manifest = load_manifest(shards_for(embeddings, args.shards or recorded_shards(vision_info)), verify=())
        build_note = check_same_shard_set(embeddings, manifest)
        check_bag_model(vision_info, manifest, embeddings.topic)  # another model's embeddings: refused, one line
        with TextEncoder.open(manifest) as text, text_progress(len(queries), "search_bag: queries") as progress:
            label_set = text.label_set(queries, limit=None, progress=progress)
        hits = rank(embeddings, label_set, args.top)
        keys = {hit.frame.key for row in hits for hit in row}
        images = frame_images(bag, keys, embeddings.topic) if args.sheet else {}
    unreadable = (f"skipped {embeddings.unreadable} unreadable message(s) on {embeddings.topic}"
                  if embeddings.unreadable else None)
    for line in (build_note, label_set.truncation_note(), unreadable):
        if line:
            print(f"search_bag: {line}", file=sys.stderr)
    print(f"{len(embeddings.frames)} frames on {embeddings.topic}, shard set {manifest.root} "
          f"({manifest.model.source})")
    print(format_hits(queries, hits))
    if args.sheet is not None:
        layout = write_contact_sheet(args.sheet, queries, hits, images)
        shown = [hit.frame.key for row in hits for hit in row]
        missing = len(set(shown) - set(images))
        print(f"contact sheet: {args.sheet} ({len(shown)} frames, {layout.size[0]} x {layout.size[1]} px"
              f"{f'; {missing} frame(s) have no image in the bag' if missing else ''})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
