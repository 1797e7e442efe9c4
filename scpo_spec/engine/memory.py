"""Freed memory kept for reuse: a training step allocates the same large blocks every time
(the n × d candidate bank, θ + D, the unpacked layers, the rollout buffers), and glibc hands
blocks over 32 MiB back to the kernel on free, so the next step pays a page fault for every
4 KiB of them again.  On this project's 2-core machine that cost 18 ms per 34 MiB block (d ≈
265 000) and 71 ms per 151 MiB block (d ≈ 1 000 000); with the blocks kept in the heap,
3.7 and 6.6 ms (benchmarks/README.md).

`keep_freed_memory` raises glibc's mmap and trim thresholds to 1 GiB (mallopt): allocations
below it come from the heap and are reused.  The process's resident memory then stays at its
peak instead of shrinking between steps.  Elsewhere than glibc it does nothing."""

from __future__ import annotations

import ctypes
import platform
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Once per process; True if glibc took the new thresholds."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _done = (libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1
                         and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1)
            except (OSError, AttributeError):
                _done = False
    return _done
