"""What the node core publishes, recorded for tests in place of ROS publishers (thread-safe; the core's dispatcher
thread publishes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class RecordingOutbox:
    """Keeps everything published to it in ``messages``; ``wait_for(n)`` waits until n have arrived."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.lock = threading.Lock()

    def record(self, item: Any) -> None:
        with self.lock:
            self.messages.append(item)

    def wait_for(self, count: int, deadline_s: float = 60.0) -> bool:
        return wait_until(lambda: len(self.messages) >= count, deadline_s)


def wait_until(condition: Callable[[], bool], deadline_s: float = 60.0) -> bool:
    """Poll ``condition`` until it holds; False if it still does not after ``deadline_s`` (a liveness deadline, not a
    timing assertion)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return condition()
