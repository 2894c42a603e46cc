"""`search_index INDEX QUERY...`: the frames of an index_bags index that best fit text (or image) queries.

    search_index fleet.lance "a forklift blocking an aisle" --top 10 --sheet hits.png --since 2026-11-01
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from rk_siglip_ros.bag.search import DEFAULT_TOP
from rk_siglip_ros.cli.common import EXIT_OK, EXIT_STATUS_HELP, positive_int, run_tool

DESCRIPTION = """\
Search an index made by index_bags: for each text query, the frames SigLIP finds most probable, as search_bag
scores them (sigmoid(logit_scale * cos + logit_bias), the same scores search_bag gives the same frames); for each
--image, the frames most like it (cosine). Prints rank, bag, image topic, stamp, frame_id and score per query;
--sheet writes a contact sheet PNG from the thumbnails in the index (no bag is read). Filters narrow the search
before it runs: --bag, --topic, --since/--until."""

EPILOG = """\
examples:
  search_index fleet.lance "a forklift blocking an aisle" "an open door" --top 10
  search_index fleet.lance "a person" --topic /front/image_raw --since 2026-11-01 --until 2026-11-30T18:00
  search_index fleet.lance --image door.jpg --sheet doors.png
Texts are embedded with the text tower of the shard set that built the index (recorded in it), or --shards DIR:
a shard set of the same model, built with --text; another model's is refused. Past 50000 rows the index has an
IVF-PQ index (built by index_bags) and the candidates are approximate; --exact scans every row.

""" + EXIT_STATUS_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search_index", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", metavar="INDEX", help="index folder or object-store URI made by index_bags")
    parser.add_argument("queries", metavar="QUERY", nargs="*", help="text queries, e.g. \"a red door\"")
    parser.add_argument("--image", nargs="+", type=Path, default=[], metavar="FILE",
                        help="image files to find look-alikes of (scored by cosine)")
    parser.add_argument("--shards", type=Path, metavar="DIR",
                        help="shard set of the index's model (default: the one recorded in the index)")
    parser.add_argument("--top", type=positive_int, default=DEFAULT_TOP, metavar="K",
                        help="frames per query (default: %(default)s)")
    parser.add_argument("--sheet", type=Path, metavar="FILE.png", help="also write a contact sheet of the top frames")
    parser.add_argument("--bag", nargs="+", default=[], metavar="TEXT",
                        help="only bags whose path contains one of these")
    parser.add_argument("--topic", nargs="+", default=[], metavar="T", help="only these image topics")
    parser.add_argument("--since", type=parse_time, metavar="TIME",
                        help="only frames stamped at or after TIME: seconds since the epoch, or an ISO date/time "
                             "(UTC unless it says otherwise)")
    parser.add_argument("--until", type=parse_time, metavar="TIME", help="only frames stamped at or before TIME")
    parser.add_argument("--exact", action="store_true", help="scan every row, even when there is an IVF-PQ index")
    return parser


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from seconds (``1700000000.5``) or ISO 8601 (an argparse ``type``)."""
    try:
        return round(float(text) * 1e9)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds since the epoch or an ISO date/time, e.g. "
                                         "2026-11-01 or 2026-11-01T08:30") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return round(moment.timestamp() * 1e9)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("search_index", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from rk_siglip_ros.fleet import FleetError, require_fleet_extra

    require_fleet_extra("search_index")
    from rk_siglip_ros.fleet.search import Filters, format_hits, nearest
    from rk_siglip_ros.fleet.store import FleetIndex
    from rk_siglip_ros.manifest import load_manifest
    from rk_siglip_ros.model_identity import ModelIdentity
    from rk_siglip_ros.text import check_texts

    if not args.queries and not args.image:
        raise FleetError("give a text QUERY or --image FILE")
    queries = check_texts(args.queries, "queries", limit=None) if args.queries else []
    if args.sheet is not None and args.sheet.suffix.lower() != ".png":
        raise FleetError(f"--sheet {args.sheet}: expected a .png file name")
    if args.since is not None and args.until is not None and args.since > args.until:
        raise FleetError("--since is after --until")
    index = FleetIndex.open_for_reading(args.index)
    shards = args.shards or (Path(index.shards) if index.shards else None)
    if shards is None or not shards.is_dir():
        raise FleetError(f"the shard set that built the index ({index.shards or 'not recorded'}) is not here; pass "
                         f"--shards DIR: a shard set of {index.identity.checkpoint} built with --text")
    manifest = load_manifest(shards, verify=())
    index.check_model(ModelIdentity.of(manifest), "search it with this shard set")
    filters = Filters(tuple(args.bag), tuple(args.topic), args.since, args.until)
    names, scorers, vectors = _queries(manifest, queries, args.image)
    want_thumbnails = args.sheet is not None
    hits = [nearest(index, vector, scorer, args.top, filters, exact=args.exact, thumbnails=want_thumbnails)
            for vector, scorer in zip(vectors, scorers, strict=True)]
    labels = [*queries, *(str(path) for path in args.image)]
    print(f"{index.count_rows()} frames in {args.index} ({index.identity.checkpoint})")
    print(format_hits(labels, hits, names))
    if args.sheet is not None:
        _sheet(args.sheet, labels, hits)
    return EXIT_OK


def _queries(manifest: object, texts: list[str], images: list[Path]) -> tuple[list[str], list, list]:
    """Per query: the score's name, its scorer over (N, D) unit rows, and its (D,) query vector."""
    import numpy as np

    from rk_siglip_ros.cli.common import text_progress
    from rk_siglip_ros.text import TextEncoder

    names: list[str] = []
    scorers: list = []
    vectors: list = []
    if texts:
        with TextEncoder.open(manifest) as text, text_progress(len(texts), "search_index: queries") as progress:
            label_set = text.label_set(texts, limit=None, progress=progress)
        note = label_set.truncation_note()
        if note:
            print(f"search_index: {note}", file=sys.stderr)
        for column in range(len(texts)):
            names.append("probability")
            scorers.append(lambda rows, c=column: label_set.probabilities(rows).reshape(len(rows), -1)[:, c])
            vectors.append(label_set.embeddings[column])
    if images:
        from rk_siglip_ros.cli.encode_images import read_image
        from rk_siglip_ros.runtime.encoder import SiglipEncoder

        with SiglipEncoder.open(manifest, backend="auto", mode="pipeline") as encoder:
            for path in images:
                vector = np.asarray(encoder.encode(read_image(path)), np.float32)
                vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
                names.append("cosine")
                scorers.append(lambda rows, v=vector: rows @ v)
                vectors.append(vector)
    return names, scorers, vectors


def _sheet(path: Path, labels: list[str], hits: list) -> None:
    from rk_siglip_ros.bag.search import write_contact_sheet

    images = {}
    bag_hits = []
    for row in hits:
        converted = []
        for hit in row:
            bag_hit = hit.as_bag_hit()
            images[bag_hit] = hit.image()
            converted.append(bag_hit)
        bag_hits.append(converted)
    layout = write_contact_sheet(path, labels, bag_hits, images.get)
    shown = sum(len(row) for row in hits)
    missing = sum(1 for row in hits for hit in row if not hit.thumbnail)
    print(f"contact sheet: {path} ({shown} frames, {layout.size[0]} x {layout.size[1]} px"
          f"{f'; {missing} frame(s) have no thumbnail' if missing else ''})")


if __name__ == "__main__":
    sys.exit(main())
