"""`build_shards` console script (not implemented yet)."""

import sys


def main() -> int:
    print("build_shards: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
