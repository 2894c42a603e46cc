"""What every command-line tool shares."""

from ..bag.errors import one_line

__all__ = ["one_line"]
