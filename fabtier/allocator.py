"""The process's memory allocators: glibc's malloc settings for a process that ingests, and
giving freed memory back to the system (glibc's heaps and Arrow's pool) after a seal.

Kept apart from what uses them, with nothing but ctypes at import: `fabtier run` tunes malloc
before it imports the pipeline and starts its threads (see `tune_allocator`).
"""

from __future__ import annotations

import ctypes
import functools

_M_MMAP_THRESHOLD = -3  # glibc mallopt(3)
_M_ARENA_MAX = -8
# Arrays of at least this many bytes get their own mapping, given back to the system when
# freed. Fixed, because glibc otherwise raises the threshold (up to 32 MiB) each time such an
# array is freed, and then every segment-sized array of the seal, of SQL over unsealed rows and
# of the scheduler's jobs is carved from a heap that keeps the high-water mark for good.
_MMAP_THRESHOLD = 256 << 10
_ARENAS = 2  # not 8 a core: each arena keeps its own free memory, and the interpreter lock serialises us anyway


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc only (not musl, not macOS)
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator() -> None:
    """Process-wide malloc settings for a process that frees a log segment's rows at every seal
    (see `_MMAP_THRESHOLD`). Best called first thing, before the imports and threads of the
    pipeline: set only once the pipeline opened, the threads started before had each taken a
    heap of their own already, and the ingesting process faulted in ~60 % more fresh pages
    (each zeroed: ~9 us a page on this kind of virtual machine). perf stat over 8 s of
    `fabtier bench ingest` (4,000 sensors, 5 statements a second): 112-123 k minor faults in
    the instance set late, 74-79 k set first thing. Calling it again changes nothing."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_ARENA_MAX, _ARENAS)


def release_freed_memory() -> None:
    """Give memory freed since the last call back to the system: glibc's heaps (a sealed
    segment's arrays, interleaved with live ones, leave holes that malloc keeps) and Arrow's
    pool (mimalloc keeps freed pages of its 1 GiB arenas; the scheduler's jobs and SQL read
    Parquet through it). Without this the resident size stays at every job's high-water mark."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)  # ctypes lets go of the interpreter lock meanwhile
