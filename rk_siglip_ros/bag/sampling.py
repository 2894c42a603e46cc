"""Frame sampling in time: at most one frame per topic every ``every_s`` seconds of sensor time.

A camera at 30 Hz records 30 nearly equal frames a second; for search, one every half second finds the same moments
at a fifteenth of the encoding. The header stamp is the clock (the camera's time, whatever the recorder's lag); a
frame with a zero stamp (a driver that never sets it) falls back to its log time.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FrameSampler:
    """keep(topic, stamp_ns, log_time_ns) says whether a frame is due; ``every_s`` 0 keeps every frame."""

    every_s: float = 0.0
    _last_kept: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.every_s < 0:
            raise ValueError(f"--every {self.every_s}: need 0 (every frame) or more seconds")

    def keep(self, topic: str, stamp_ns: int, log_time_ns: int) -> bool:
        if self.every_s <= 0:
            return True
        now = stamp_ns if stamp_ns > 0 else log_time_ns
        last = self._last_kept.get(topic)
        # A clock that jumps back (a replayed or reset camera) restarts the interval instead of silencing the topic.
        if last is not None and last <= now < last + round(self.every_s * 1e9):
            return False
        self._last_kept[topic] = now
        return True
