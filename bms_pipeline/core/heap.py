"""Giving freed memory back to the system, where the C library keeps it.

glibc keeps freed blocks for reuse, in one arena per thread that allocated them. A large
structure freed amid live ones (OpenSlide's tile map of a full-height slide: about 124 MiB
of small blocks) or the free space of many threads' varying allocations stays resident
unless `malloc_trim` returns its whole pages. The conversion calls this at the points where
such memory was just freed; it changes no allocator setting and is a no-op elsewhere than
glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, looked up once (None elsewhere)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_heap() -> None:
    """Give the whole free pages of every arena back to the system (glibc's `malloc_trim`).
    Measured on the full-height slide: after OpenSlide's handle was released, 324 MiB
    resident; after this, 170. Nothing on other C libraries."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
