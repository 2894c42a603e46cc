"""`build_shards`: turn a Hugging Face SigLIP / SmolVLM vision checkpoint into a verified RK3588 shard set."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from rk_siglip_ros.builder.barrier import BARRIERS
from rk_siglip_ros.builder.options import DTYPES, FORMATS, BuildOptions
from rk_siglip_ros.builder.shard_plan import PROFILES
from rk_siglip_ros.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_tool

# Each flag's dest is the BuildOptions field of the same name; its default is that field's default.
DEFAULTS = BuildOptions()
OPTION_NAMES = tuple(field.name for field in fields(BuildOptions))

EPILOG = """\
examples:
  build_shards --model google/siglip-base-patch16-512 --out shards/siglip-b16-512
  build_shards --model ./siglip-checkpoint --out shards/seed --profile seed
  build_shards --model random:tiny --out /tmp/tiny --formats onnx      (seconds; no checkpoint needed)
  build_shards --model ./siglip-checkpoint --out shards/default --text  (+ text tower: labels, encode_text, search_bag)
  build_shards --model ./siglip-checkpoint --out shards/split --profile split   (for --mode split: lowest latency)

profiles: pipeline3 = 3 MAC-balanced shards, one per NPU core (default); seed = 26 shards (embedding, 12 attention
halves, 12 MLP halves, norm + head) with 32-token attention tiles and the poison-pill barrier; whole = one graph;
split = every layer cut by query tokens into one part per NPU core (--shards N parts, default 3), run by the
encoder's split mode on all cores at once with a host all-gather per layer: one frame's latency, not throughput.
exit status: 0 built and verified, 1 verification or compilation failed, 2 bad arguments or model."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_shards", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="SRC",
                        help="checkpoint folder (config.json + *.safetensors), hub id (owner/name), or random:<preset> "
                             "(tiny, tiny-smolvlm, tiny-12, siglip-base-patch16-512, smolvlm-vision-512)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="shard set folder to create")
    parser.add_argument("--profile", choices=PROFILES, default=DEFAULTS.profile, help="how to cut the graph (default: "
                        "%(default)s)")
    parser.add_argument("--shards", type=int, metavar="N", help="override the profile's shard count (MAC-balanced); "
                        "for split: parts per layer (default 3, one per NPU core)")
    parser.add_argument("--tile", type=int, metavar="T", help="attention query tile size in tokens, 0 = off "
                        "(default: 32 for seed, off otherwise)")
    parser.add_argument("--barrier", choices=BARRIERS, help="fusion barrier keeping tiles apart (default: poison for "
                        "seed, none otherwise)")
    parser.add_argument("--scale", type=float, default=DEFAULTS.scale, metavar="S",
                        help="host-side residual scale folded into the weights; 1 = off (default: %(default)s)")
    parser.add_argument("--target", default=DEFAULTS.target, help="RKNN target platform (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default=DEFAULTS.dtype, help="RKNN precision (default: "
                        "%(default)s)")
    parser.add_argument("--calibration", type=Path, metavar="DIR", help="folder of images for int8 calibration")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated files to write: onnx, rknn "
                        "(default: %(default)s; onnx is always written)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the ONNX Runtime and RKNN "
                        "simulator checks against the fp32 model")
    parser.add_argument("--text", action="store_true", help="also export the text tower (ONNX, runs on the CPU) and "
                        "the tokenizer, for labels, encode_text and search_bag; needs a SigLIP checkpoint with its "
                        "text tower and tokenizer files (or a random: SigLIP preset)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool("build_shards", lambda: _build(args))  # the last resort every tool shares: a bug says so


def _build(args: argparse.Namespace) -> int:
    # Heavy imports after argument parsing so --help is instant.
    from rk_siglip_ros.builder.build import BuildInputError, build_shards
    from rk_siglip_ros.builder.models import ModelSourceError
    from rk_siglip_ros.builder.report import summary_table
    from rk_siglip_ros.builder.rknn_compile import RknnError
    from rk_siglip_ros.builder.verify import VerificationError

    options = {name: getattr(args, name) for name in OPTION_NAMES}
    options["formats"] = tuple(kind.strip() for kind in args.formats.split(",") if kind.strip())
    try:
        manifest = build_shards(args.model, args.out, force=args.force, progress=not args.quiet, **options)
    except (BuildInputError, ModelSourceError) as error:
        print(f"build_shards: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except VerificationError as error:
        print(f"build_shards: verification failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except RknnError as error:
        print(f"build_shards: RKNN compilation failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:  # unwritable --out, disk full: say which file, no traceback
        print(f"build_shards: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("build_shards: interrupted; nothing was written to --out", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary_table(manifest))
    print(f"\nwrote {len(manifest.shards)} shards to {args.out} ({manifest.profile}, host scale {manifest.host_scale})")
    if manifest.text is not None:
        text = manifest.text
        print(f"text tower: {text.onnx} ({text.embedding_dim}-d, tokenizer {text.tokenizer.kind}, max length "
              f"{text.tokenizer.max_length}, logit scale {text.logit_scale:.4g}, bias {text.logit_bias:.4g}, ONNX vs "
              f"transformers cos {text.verification.get('onnx_vs_fp32_cos') or float('nan'):.7f})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
