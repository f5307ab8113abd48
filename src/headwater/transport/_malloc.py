"""Allocator tuning for processes that move ~1 MB buffers all the time.

A fetch or produce batch is one journal record of up to ``max_batch_bytes``
(1 MiB): the server reads it, frames it and sends it; the client receives,
unframes and decodes it. Each step allocates and frees a buffer of that
size. glibc serves such buffers from the heap once its dynamic mmap
threshold has risen past them, but gives freed memory at the top of the heap
back to the kernel once more than twice that threshold is free, so the next
buffer faults its pages in again (and the kernel zeroes them): measured on
the 1 KiB consume of ``benchmarks/run.py peers``, a third of the server's
CPU per event went away with the thresholds below (8.5 -> 5.5 µs, three
interleaved rounds, both processes tuned; 7-8 -> 6-7.5 with the server
alone).

:func:`tune_allocator` fixes the mmap threshold at :data:`MMAP_THRESHOLD`
(buffers below it come from the heap and are reused) and keeps up to
:data:`TRIM_THRESHOLD` of free heap before trimming. A process then holds
at most that much freed memory more than before. Only ``headwater serve``
calls it (a process Headwater owns); an application embedding the client
may call it too. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Final

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator"]

M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 4 << 20
"""Allocations below this come from the heap (a record is at most 1 MiB)."""
TRIM_THRESHOLD: Final = 16 << 20
"""Free heap kept before memory is given back to the kernel."""


def _libc() -> Any | None:
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_allocator(libc: Any | None = None) -> bool:
    """Set glibc's mmap and trim thresholds (see the module docs); ``True``
    if both were set. ``libc`` (tests) stands in for the C library.
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the
    environment win: then nothing is changed."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    if libc is None:
        libc = _libc()
    if libc is None:
        return False
    try:
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok)
    except (AttributeError, OSError, ctypes.ArgumentError):
        return False
