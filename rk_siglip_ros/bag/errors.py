"""The bag tools' error type (rosbags-free, so a tool can name it without reading bags)."""

from __future__ import annotations

from rk_siglip_ros.errors import UserError


class BagError(UserError, ValueError):
    """A request the bag tools cannot carry out; the message is one line that says what to do."""
