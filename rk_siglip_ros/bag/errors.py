"""The bag tools' error type and how errors are shown to people."""

from __future__ import annotations


class BagError(ValueError):
    """A request encode_bag cannot carry out; the message is one line that says what to do."""


def one_line(error: BaseException) -> str:
    """An error as one line for a person: whitespace collapsed, no trailing period, the type name if it is empty."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.rstrip(".")
