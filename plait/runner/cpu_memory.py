"""Where freed CPU memory goes: kept for the next step's temporaries, or handed back at once while loading.

glibc serves large allocations with mmap and gives them back on free, so each step's multi-megabyte
intermediates (gathered KV context, MLP activations) page-fault afresh; on small VMs a fault costs a
microsecond or more per 4 KiB page, which made the KV gather 2-3x slower than the copy itself. Raising the
mmap and trim thresholds makes glibc reuse that memory. The pool of the process grows to the working set of
one step and stays there, which is what an inference engine wants anyway.

Loading is the opposite case: it frees far more than it keeps (a GGUF's blocks are dequantized to fp32, cast,
prepacked or repacked to 4 bits). Inside `loading_scope` every allocation above 128 KiB gets its own mapping, so
those transients go back to the OS when freed and leave no holes between the live weights. (The earlier way,
malloc_trim after loading, returned the same memory, but left the heap around the live tensors so that kernels
reading them ran up to 10x slower on this VM: SiLU-and-multiply over a 512-token prefill took 2.5 ms instead of
0.25 ms; measured, not explained.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TUNED = 1 << 30
_LOADING_MMAP = 128 << 10  # glibc's initial mmap threshold
# What glibc's own dynamic thresholds grow to at most (64-bit): setting any threshold switches the dynamic
# adjustment off for good, so after loading an untuned process gets the values it would have reached.
_GLIBC_MMAP_MAX = 32 << 20
_GLIBC_TRIM_MAX = 64 << 20


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(bool(libc.mallopt(param, value)) for param, value in settings)
    except (OSError, AttributeError):
        return False


def keep_freed_memory() -> bool:
    """Tune glibc malloc for reuse; returns False where that is not possible (not glibc)."""
    return _mallopt(((_M_MMAP_THRESHOLD, _TUNED), (_M_TRIM_THRESHOLD, _TUNED)))


@contextmanager
def loading_scope(keep_after: bool) -> Iterator[None]:
    """Large allocations inside get their own mappings, returned to the OS when freed (loading's transients).
    After: `keep_after` (EngineConfig.tune_malloc) raises the thresholds for reuse (keep_freed_memory), else
    they are set to glibc's own dynamic ceilings."""
    _mallopt(((_M_MMAP_THRESHOLD, _LOADING_MMAP),))
    try:
        yield
    finally:
        if keep_after:
            keep_freed_memory()
        else:
            _mallopt(((_M_MMAP_THRESHOLD, _GLIBC_MMAP_MAX), (_M_TRIM_THRESHOLD, _GLIBC_TRIM_MAX)))
