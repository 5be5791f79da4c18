"""Give the memory that the C allocator keeps after `free` back to the operating system, when it is a lot.

glibc keeps freed blocks in its arenas for reuse, and a request's buffers (a
600 KB image tensor, the merged batch, the engine's outputs) leave holes that
it rarely returns: under overload the server's RSS rises in its first second
and stays there, and `malloc_trim` gives all of it back, quickly
(benchmarks/results/overload.json, "notes").

Trimming has a price in steady traffic, though: the next requests' buffers land
on pages the kernel must fault in again. So the trimmer trims only when the resident set has grown by more than
`keep_bytes` since the last trim: a burst's surplus goes back, the working set
of ordinary traffic stays mapped. (glibc's own count of the free bytes it holds
cannot decide this: chunks already given back stay in it.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None


_MALLOC_TRIM = _glibc_malloc_trim()
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set, from /proc (Linux, where the trimmer works): cheap enough to read per request."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


class MemoryTrimmer:
    """Calls `malloc_trim(0)` at most once per `interval_s`, when RSS grew over `keep_bytes` since the last trim."""

    def __init__(self, interval_s: float = 0.1, keep_bytes: int = 16 << 20) -> None:
        self.interval_s = interval_s
        self.keep_bytes = keep_bytes
        self._last = 0.0
        self._trimmed_to: int | None = None

    def trim(self) -> None:
        now = time.monotonic()
        if _MALLOC_TRIM is None or now - self._last < self.interval_s:
            return
        self._last = now
        if self._trimmed_to is not None and resident_bytes() <= self._trimmed_to + self.keep_bytes:
            return
        _MALLOC_TRIM(0)
        self._trimmed_to = resident_bytes()
