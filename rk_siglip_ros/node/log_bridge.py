"""The library's Python logging, forwarded into the node's log.

The encoder, the scheduler and the dispatcher report through Python's ``logging`` (so ``encode_bag`` and scripts
see the same lines). Nobody configures Python logging in the node, so its warnings and errors went to stderr in
Python's bare format beside the node's own lines (and never to /rosout), and the node repeated some of them in its
own words. The node forwards them to its rclpy logger instead, level kept, and reports each event once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

LIBRARY_LOGGER = "rk_siglip_ros"

LogLine = Callable[[str], None]


class ForwardingHandler(logging.Handler):
    """Every record (message, and traceback when there is one) to the sink for its level: error (ERROR and above),
    warn, or info (everything below WARNING that gets here: forward_library_logs lets nothing below INFO through)."""

    def __init__(self, info: LogLine, warn: LogLine, error: LogLine) -> None:
        super().__init__()
        self._sinks = ((logging.ERROR, error), (logging.WARNING, warn), (logging.NOTSET, info))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            sink = next(sink for level, sink in self._sinks if record.levelno >= level)
            sink(line)
        except Exception:  # noqa: BLE001 - logging must never raise into the code that logs
            self.handleError(record)


def forward_library_logs(info: LogLine, warn: LogLine, error: LogLine) -> Callable[[], None]:
    """Send the ``rk_siglip_ros`` loggers' records (INFO and above) to these sinks instead of Python's default
    stderr output; returns the function that undoes it."""
    library = logging.getLogger(LIBRARY_LOGGER)
    handler = ForwardingHandler(info, warn, error)
    previous = library.propagate, library.level
    library.addHandler(handler)
    library.propagate = False  # not also to the root logger or Python's last-resort stderr handler
    library.setLevel(logging.INFO)

    def undo() -> None:
        library.removeHandler(handler)
        library.propagate, library.level = previous[0], previous[1]

    return undo
