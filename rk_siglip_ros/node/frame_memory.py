"""Let the node's process reuse the memory of camera frames instead of faulting fresh pages in for every frame.

Each camera message passes through buffers of its own size: Cyclone's reassembled sample, rcl's serialized copy
and the Python bytes the mailbox keeps (a 1920x1080 rgb8 frame: 6.2 MB each). glibc's malloc gives allocations
above its mmap threshold their own fresh pages, and hands the freed top of a heap back to the kernel above its trim
threshold. Both adapt to the largest block freed so far; whether that is enough depends on how many buffers are
freed together. In the node it was for 640x480 frames (2 000-7 600 page faults in 5 s of 3 x 30 Hz) but not for
1080p ones: 95 000-155 000 page faults in 5 s, a fifth of the node's CPU. With both thresholds set high, freed frame
buffers stay in the heap and the next frame reuses them (40-550 page faults in the same 5 s).

The price, process-wide: glibc's adaptive thresholds are off; every allocation up to the mmap threshold (the
encoder's and OpenCV's too, not only frames) comes from the heaps; and a thread's heap never shrinks below its peak
(the trim threshold is above the 64 MB a thread's heap grows by). The process keeps its peak memory instead of
returning it between frames: 0-30 MB more resident in a 3-camera 1080p run with the `sim` backend.

So only the node's executable (encoder_node.main) calls it, never a library import. Linux with glibc only; nothing
changes when the user set glibc's malloc settings (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, or
glibc.malloc.* in GLIBC_TUNABLES).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold 64-bit glibc accepts (its DEFAULT_MMAP_THRESHOLD_MAX), so frames up to 4K rgb8 (25 MB)
# are reused. 32-bit glibc caps it at 512 KB, too small for any frame: it refuses this, and the node logs that.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Free memory a heap may keep at its top before trimming: several frames of any size up to the mmap threshold.
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_frame_buffers() -> tuple[bool, str]:
    """Raise glibc's mmap and trim thresholds for this process. Returns whether things are as intended (set, or the
    user's own settings kept) and what was done, for the start-up log."""
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return True, "malloc settings as the environment sets them (frame buffers: glibc's defaults left alone)"
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False, "frame buffers not reused: not Linux with glibc (malloc settings unchanged)"
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        return False, "frame buffers not reused: glibc refused the mmap threshold (malloc settings unchanged)"
    if not mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES):
        return False, "frame buffers reused in part: glibc refused the trim threshold"
    return True, (f"frame buffers reused (malloc mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MB, trim threshold "
                  f"{TRIM_THRESHOLD_BYTES >> 20} MB)")


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.35"; musl and others have no such name
    except (ValueError, OSError):
        return None
    if not version:
        return None
    mallopt = ctypes.CDLL(None).mallopt  # the symbols this process has loaded: the C library's among them
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
