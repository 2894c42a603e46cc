"""`encode_images` console script (not implemented yet)."""

import sys


def main() -> int:
    print("encode_images: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
