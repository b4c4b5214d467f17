"""Where freed CPU memory goes: kept for the next step's temporaries, or handed back once after loading.

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


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc malloc_trim); False where that is not possible.

    Loading a model frees far more than it keeps (a GGUF's blocks are dequantized to fp32, cast, prepacked or
    repacked to 4 bits), and glibc keeps freed memory inside the heap (for good, with keep_freed_memory's
    thresholds): measured 355 MiB resident after the default model loaded, a third of the process. Called once
    after building and after weight updates, never per step, so it costs nothing in steady state.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
