"""Keep freed memory in the process for the next step (glibc malloc); every `Learner` applies it.

Every learner step allocates and frees the same activations. With glibc's defaults a freed
block above 128 KiB may go back to the kernel (mmap'd blocks and the top of the heap above a
trim threshold that adapts to recent sizes), and the next step takes it back one zeroed 4 KiB
page fault at a time. Measured on a 2-core CPU (`/proc` counters, 1M-row buffer): the 10-critic
PARS step took about 4,000 minor page faults and 8-10 ms of kernel time per step (~30 ms);
with these settings, 0 faults, 0.1 ms, and 10% more steps/s.

Blocks up to `MMAP_THRESHOLD` now come from the heap and the heap is not trimmed, so the
process keeps its high-water mark of such blocks; larger ones (datasets) are still returned.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: HEAP_MAX_SIZE / 2 on 64-bit
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


_applied = False


def retain_freed_memory() -> bool:
    """Apply the settings to this process; False where the C library is not glibc."""
    global _applied
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _applied


def applied() -> bool:
    """Whether this process runs with the settings (glibc accepted both)."""
    return _applied
