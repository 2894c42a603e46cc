"""node.frame_memory: with it, a process that allocates and frees frame-sized buffers stops page-faulting them in
again for every frame; without it (glibc's defaults) it does. Each case runs in a fresh process: the setting is
process-wide and cannot be undone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc thresholds are a glibc setting")

# Four 640x480 rgb8-sized buffers per "frame" (DDS sample, rcl copy, Python bytes, the mailbox's), freed together:
# more than glibc's adapted trim threshold, so with its defaults they go back to the kernel each time. 100 frames,
# on a second thread as well as the main one (DDS and the executor allocate from their own malloc arenas).
FRAMES = """
import resource, sys, threading
if sys.argv[1] == "keep":
    from rk_siglip_ros.node.frame_memory import keep_frame_buffers
    print(*keep_frame_buffers(), sep=": ")
def frames():
    for _ in range(100):
        buffers = [b"\\x01" * 921_600 for _ in range(4)]
        del buffers
frames()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
worker = threading.Thread(target=frames)
worker.start()
worker.join()
frames()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
FRAME_PAGES = 4 * 921_600 // 4096  # pages one frame's buffers touch


def page_faults(mode: str, **env: str) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", FRAMES, mode], capture_output=True, text=True, check=True,
                          env=environment)
    lines = done.stdout.splitlines()
    return (lines[0] if mode == "keep" else ""), int(lines[-1])


def test_frame_buffers_are_reused_instead_of_faulted_in_per_frame():
    said, kept = page_faults("keep")
    _, defaults = page_faults("defaults")
    assert said.startswith("True: frame buffers reused (malloc mmap threshold 32 MB")
    assert defaults > 100 * FRAME_PAGES  # glibc's defaults: the 200 frames fault most of their pages in again
    assert kept < 10 * FRAME_PAGES  # reused: a few frames' worth in all (the worker thread's arena, once)


@pytest.mark.parametrize("setting", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                     {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_the_users_own_malloc_settings_win(setting):
    said, faults = page_faults("keep", **setting)
    assert said.startswith("True: malloc settings as the environment sets them")
    assert faults > 100 * FRAME_PAGES  # the user's small trim threshold stands: pages go back to the kernel
