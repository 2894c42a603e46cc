"""`encoder_node` console script: the rclpy adapter (not implemented yet)."""

import sys


def main() -> int:
    print("encoder_node: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
