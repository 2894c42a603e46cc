"""Let the node's process reuse the memory of camera frames instead of faulting fresh pages in for every frame.

Each camera message passes through buffers of its own size: Cyclone's reassembled sample, rcl's serialized copy
and the Python bytes the mailbox keeps (a 1920x1080 rgb8 frame: 6.2 MB each). glibc's malloc gives allocations
above its mmap threshold their own fresh pages, and hands the freed top of a heap back to the kernel above its trim
threshold. Both adapt to the largest block freed so far, which is enough for 640x480 frames but not for 1080p ones:
95 000-155 000 page faults in 5 s of 3 x 30 Hz 1080p in the node here, a fifth of its CPU. With both thresholds set
high, freed frame buffers stay in the heap and the next frame reuses them (40-550 page faults in the same 5 s). The
price: the process keeps its peak frame memory (a few frames' worth) instead of returning it between frames.

Process-wide, so only the node's executable (encoder_node.main) calls it, never a library import. glibc only: on
another C library, or when the user set glibc's own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, nothing changes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# 32 MB is the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): frames up to 4K rgb8 (25 MB) fit.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Free memory a heap may keep at its top before trimming: several frames of any size up to the mmap threshold.
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_frame_buffers() -> str:
    """Raise glibc's mmap and trim thresholds for this process; returns what was done, for the start-up log."""
    if any(name in os.environ for name in USER_SETTINGS):
        return "malloc thresholds as set in the environment"
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return "malloc thresholds unchanged (not glibc)"
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        return "malloc thresholds unchanged (mallopt refused them)"
    return (f"frame buffers reused (malloc mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MB, trim threshold "
            f"{TRIM_THRESHOLD_BYTES >> 20} MB)")


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    libc = ctypes.CDLL(None)  # the symbols this process has loaded, the C library's among them
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # glibc's own symbol: not musl
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
