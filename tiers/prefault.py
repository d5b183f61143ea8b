"""The first page of the hot ring's new rows backed ahead of their first reading, off the
ingest thread.

Why: a sensor's first reading is the first write to its row, which faults in a page of each
store (~2.3 us on shared anonymous memory). At 100,000 sensors that is 200,000 faults, half a
second of the ingest thread in the first second of the stream (in process, the first million
readings cost 1,059 ns each, 592 with those pages backed beforehand, 285 later). A thread of its
own asks the kernel to back them first, on a core that has time: `madvise(MADV_POPULATE_WRITE)`
allocates the pages as a write would and leaves their contents alone, so it is safe beside the
ingest thread writing the same rows. Its loop is compiled without the interpreter lock (numba
`nogil`, calling libc's madvise): tens of thousands of calls from Python would each hand the
lock over to the ingest thread and back.

Linux 5.14 and later; elsewhere (or where the call is refused) nothing is prefaulted and the
first reading of a row faults its pages as before.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading
import weakref
from collections.abc import Callable

import numpy as np

MADV_POPULATE_WRITE = 23  # linux/mman.h
# Rows backed ahead of those in use: as many as are in use, from 1,024 to 16,384. While a
# fab's sensors appear (a thousand machines of a hundred sensors within a second) the thread
# stays ahead of most; 8 KiB a row (a page of each store), so at most 128 MiB beyond the rows in
# use, and 8 MiB for a ring of a thousand sensors. Within `[hot] memory_budget` all the same:
# a ring's stores hold no more rows than the budget backs at a page of each.
MIN_AHEAD_ROWS, MAX_AHEAD_ROWS = 1024, 16384


def ahead(rows_in_use: int) -> int:
    """The row up to which to back pages, given the rows in use."""
    return rows_in_use + min(max(rows_in_use, MIN_AHEAD_ROWS), MAX_AHEAD_ROWS)

_IDLE_CHECK_S = 5.0  # how often an idle thread looks whether its ring is gone
_populate: Callable[[int, int, int, int, int], int] | None = None
_probed = False  # `_populate` is what `loaded` found (None: not supported here)
_loading = threading.Lock()


def _compile() -> Callable[[int, int, int, int, int], int] | None:
    """The compiled loop, or None where madvise cannot be called (not Linux). Not cached on
    disk: the address of libc's madvise is part of the compiled code, and differs by process."""
    if not sys.platform.startswith("linux"):
        return None
    import numba

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int

    @numba.njit(nogil=True)
    def populate(address: int, row_bytes: int, first: int, stop: int, page: int) -> int:
        """Back the page that holds the start of each row `first:stop` of the array at
        `address` (rows that share pages: every page of their span, in one call); the calls
        that failed."""
        failed = 0
        if row_bytes < page:
            begin = (address + first * row_bytes) // page * page
            end = address + stop * row_bytes
            if end > begin and madvise(begin, end - begin, MADV_POPULATE_WRITE) != 0:
                failed += 1
            return failed
        for row in range(first, stop):
            start = (address + row * row_bytes) // page * page
            if madvise(start, page, MADV_POPULATE_WRITE) != 0:
                failed += 1
        return failed

    return populate


def loaded() -> Callable[[int, int, int, int, int], int] | None:
    """Compile the loop once (holding the interpreter lock ~0.3 s: call before ingestion
    starts, as `tiers.hot.use_compiled_writes` does) and check that the system takes the call."""
    global _populate, _probed
    with _loading:
        if not _probed:
            populate = _compile()
            probe = np.zeros(1, np.int64)
            if populate is not None and populate(probe.ctypes.data, 8, 0, 1, mmap.PAGESIZE) != 0:
                populate = None  # a kernel without MADV_POPULATE_WRITE: EINVAL
            _populate, _probed = populate, True
        return _populate


def back_span(populate: Callable[[int, int, int, int, int], int], address: int, length: int) -> int:
    """Back the pages of `length` bytes from `address` with the loop `loaded` returns, in one
    madvise call (rows of one byte share their pages: the loop's whole-span case); 1 if the
    call failed."""
    return populate(address, 1, 0, length, mmap.PAGESIZE)


class RowPrefaulter:
    """A daemon thread that backs the first page of rows in both of a ring's stores, up to the
    row `ask` last named; it ends once the ring that owns it is gone."""

    def __init__(self, owner: object, populate: Callable[[int, int, int, int, int], int], page: int) -> None:
        self._owner = weakref.ref(owner)
        self._populate = populate
        self._page = page
        self._wake = threading.Condition()
        self._stores: tuple[np.ndarray, ...] = ()
        self._upto = 0
        self.backed = 0  # rows of the current stores done (read by tests)
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="hot-prefault", daemon=True)
        self._thread.start()

    def ask(self, stores: tuple[np.ndarray, ...], upto: int) -> None:
        """Back rows up to `upto` of `stores` (the ring's current ts and value stores; new ones
        start again from row 0)."""
        with self._wake:
            if not self._stores or stores[0] is not self._stores[0]:
                self._stores, self.backed = stores, 0
            self._upto = min(upto, len(stores[0]))
            self._wake.notify()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every row asked for is backed (for tests)."""
        with self._wake:
            return self._wake.wait_for(lambda: self.backed >= self._upto, timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self.backed >= self._upto:
                    self._wake.wait(timeout=_IDLE_CHECK_S)
                    if self._owner() is None:
                        return
                stores, first, stop = self._stores, self.backed, self._upto
            for store in stores:  # held here: the arrays stay mapped while they are populated
                self.failed += self._populate(store.ctypes.data, store.strides[0], first, stop, self._page)
            with self._wake:
                if self._stores is stores:
                    self.backed = max(self.backed, stop)
                self._wake.notify_all()
