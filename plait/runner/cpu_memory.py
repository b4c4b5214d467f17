"""Keep freed activation memory in the process instead of returning it to the OS after every op.

glibc serves large allocations with mmap and gives them back on free, so each step's multi-megabyte
intermediates (gathered KV context, MLP activations) page-fault afresh; on small VMs a fault costs a
microsecond or more per 4 KiB page, which made the KV gather 2-3x slower than the copy itself. Raising the
mmap and trim thresholds makes glibc reuse that memory. The pool of the process grows to the working set of
one step and stays there, which is what an inference engine wants anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tune glibc malloc for reuse; returns False where that is not possible (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                       _THRESHOLD))
    except (OSError, AttributeError):
        return False
