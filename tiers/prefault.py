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

The same thread keeps the rows in use backed a little ahead of their writes (`RowFollower`):
until a row has filled its capacity once (a window of readings: minutes), each reading moves
its write position onto memory never written, and every 512th faults in a page of each store.
At 4,000 sensors and 1.3 M readings/s that is ~5,000 faults a second, 57 % of the ingesting
process's page faults (perf, `fabtier bench ingest`), all in the ingest thread's compiled
append. Every `FOLLOW_S` the thread backs, for each row, the pages its writes will reach
within the next few passes at the pace it went since the last, so that a fast row has its
next page before it needs it, and a slow one (100,000 sensors at 10 Hz: a page every 51 s)
gets it only when near, not a page of each store ahead for every sensor at once.

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
from typing import Any

import numpy as np

MADV_POPULATE_WRITE = 23  # linux/mman.h
# Rows backed ahead of those in use: as many as are in use, from 1,024 to 16,384. While a
# fab's sensors appear (a thousand machines of a hundred sensors within a second) the thread
# stays ahead of most; 4 KiB a row (a page of the ring's store), so at most 64 MiB beyond the
# rows in use, and 4 MiB for a ring of a thousand sensors. Within `[hot] memory_budget` all the
# same: a ring's store holds no more rows than the budget backs at a page a row.
MIN_AHEAD_ROWS, MAX_AHEAD_ROWS = 1024, 16384


def ahead(rows_in_use: int) -> int:
    """The row up to which to back pages, given the rows in use."""
    return rows_in_use + min(max(rows_in_use, MIN_AHEAD_ROWS), MAX_AHEAD_ROWS)

_IDLE_CHECK_S = 5.0  # how often an idle thread looks whether its ring is gone
FOLLOW_S = 0.25  # how often the rows in use are backed ahead of their writes
_FOLLOW_PASSES = 4  # how far ahead: the slots a row took in the last pass, this many times
_populate: Callable[[int, int, int, int, int], int] | None = None
_follow: Callable[..., int] | None = None
_probed = False  # `_populate` is what `loaded` found (None: not supported here)
_loading = threading.Lock()


def _compile() -> tuple[Callable[[int, int, int, int, int], int], Callable[..., int]] | None:
    """The compiled loops (`populate`, `follow`), or None where madvise cannot be called (not
    Linux). Not cached on disk: the address of libc's madvise is part of the compiled code, and
    differs by process."""
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

    @numba.njit(nogil=True)
    def follow(addresses: np.ndarray, row_bytes: int, written: np.ndarray, seen: np.ndarray, done: np.ndarray,
               rows: int, capacity: int, passes: int, page: int, slot_bytes: int) -> int:
        """For each row below `rows` that has not filled `capacity` slots (`slot_bytes` each), back
        the pages of each store (at `addresses`, rows `row_bytes` apart, page-aligned) up to the
        slot it will reach after `passes` more steps like its last (`written` now, `seen`
        before); `done`: the slot up to which each row's pages are backed. The calls that
        failed."""
        failed = 0
        per_page = page // slot_bytes
        for row in range(rows):
            now = written[row]
            step = now - seen[row]
            seen[row] = now
            if step <= 0 or now >= capacity:
                continue
            target = min(now + step * passes, capacity)
            if target <= done[row]:
                continue
            # target is past both `done` and `now`: the span holds a page at least
            first = max(done[row], now) // per_page * per_page
            stop = min(-(-target // per_page) * per_page, capacity)
            done[row] = stop
            for address in addresses:
                if madvise(address + row * row_bytes + first * slot_bytes, (stop - first) * slot_bytes,
                           MADV_POPULATE_WRITE) != 0:
                    failed += 1
        return failed

    return populate, follow


def loaded() -> Callable[[int, int, int, int, int], int] | None:
    """Compile both loops once (holding the interpreter lock ~0.3 s each: call before ingestion
    starts, as `tiers.hot.use_compiled_writes` does) and check that the system takes the call."""
    global _populate, _follow, _probed
    with _loading:
        if not _probed:
            loops = _compile()
            probe = np.zeros(1, np.int64)
            if loops is not None and loops[0](probe.ctypes.data, 8, 0, 1, mmap.PAGESIZE) == 0:
                _populate, _follow = loops
                # Compiled here, with the argument types `RowFollower.step` passes (int64
                # arrays, Python ints), not at the follower's first step: that came once
                # ingestion ran, and held the interpreter lock ~0.35 s of the ingest thread's
                # time (py-spy --gil, `fabtier bench ingest`, 63-70 samples at 200 Hz).
                _follow(probe, 8, probe, probe.copy(), probe.copy(), 0, 1, _FOLLOW_PASSES, mmap.PAGESIZE, 8)
            # else a kernel without MADV_POPULATE_WRITE (EINVAL): neither
            _probed = True
        return _populate


def loaded_follow() -> Callable[..., int] | None:
    """`RowFollower`'s loop, where `loaded` found the system takes the call."""
    loaded()
    return _follow


def back_span(populate: Callable[[int, int, int, int, int], int], address: int, length: int) -> int:
    """Back the pages of `length` bytes from `address` with the loop `loaded` returns, in one
    madvise call (rows of one byte share their pages: the loop's whole-span case); 1 if the
    call failed."""
    return populate(address, 1, 0, length, mmap.PAGESIZE)


class RowFollower:
    """Backs the rows in use of a ring's stores ahead of their writes (`follow`'s loop), from
    one call to the next; new stores (a re-layout) start again from what their rows hold."""

    def __init__(self, follow: Callable[..., int], page: int) -> None:
        self._follow = follow
        self._page = page
        self._store: np.ndarray | None = None
        self._seen = np.zeros(0, np.int64)
        self._done = np.zeros(0, np.int64)

    def step(self, stores: tuple[np.ndarray, ...], written: np.ndarray, rows: int, capacity: int,
             slot_bytes: int = 8) -> int:
        """One pass over rows `:rows` of slots of `slot_bytes`, with `written` each row's slots
        written so far (read as the writer moves it: a stale count only backs a page later or
        sooner); the calls that failed. Rows narrower than a page share pages: the first-page
        backing covers them."""
        row_bytes = stores[0].strides[0]
        if row_bytes % self._page or any(s.ctypes.data % self._page for s in stores):
            return 0
        rows = min(rows, len(written), *(len(s) for s in stores))
        if stores[0] is not self._store:  # what a new store's rows hold is backed already
            self._store = stores[0]
            self._seen = np.array(written[:rows], dtype=np.int64)
            self._done = self._seen.copy()
        elif rows > len(self._seen):  # new rows: nothing written yet
            grow = rows - len(self._seen)
            self._seen = np.concatenate([self._seen, np.zeros(grow, np.int64)])
            self._done = np.concatenate([self._done, np.zeros(grow, np.int64)])
        addresses = np.array([s.ctypes.data for s in stores], dtype=np.int64)
        return self._follow(addresses, row_bytes, written, self._seen, self._done, rows,
                            min(capacity, row_bytes // slot_bytes), _FOLLOW_PASSES, self._page, slot_bytes)


class RowPrefaulter:
    """A daemon thread that backs the first page of rows in each of a ring's stores, up to the
    row `ask` last named, and, given `follow` (of the owner: its stores, written counts, rows in
    use, capacity and a slot's bytes, read each `FOLLOW_S`), the rows in use ahead of their writes (`RowFollower`);
    it ends once the ring that owns it is gone."""

    def __init__(self, owner: object, populate: Callable[[int, int, int, int, int], int], page: int,
                 follow: Callable[[Any], tuple[tuple[np.ndarray, ...], np.ndarray, int, int, int]] | None = None
                 ) -> None:
        self._owner = weakref.ref(owner)
        self._populate = populate
        self._page = page
        self._state = follow
        loop = loaded_follow() if follow is not None else None
        self._follower = RowFollower(loop, page) if loop is not None else None
        self._wake = threading.Condition()
        self._stores: tuple[np.ndarray, ...] = ()
        self._upto = 0
        self.backed = 0  # rows of the current stores done (read by tests)
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="hot-prefault", daemon=True)
        self._thread.start()

    def ask(self, stores: tuple[np.ndarray, ...], upto: int) -> None:
        """Back rows up to `upto` of `stores` (the ring's current store of slots; new ones
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
        pause = FOLLOW_S if self._follower is not None else _IDLE_CHECK_S
        while True:
            with self._wake:
                if self.backed >= self._upto:
                    self._wake.wait(timeout=pause)
                asked = self.backed < self._upto
                stores, first, stop = self._stores, self.backed, self._upto
            if not asked:
                owner = self._owner()
                if owner is None:
                    return
                self._follow_writes(owner)
                del owner  # not kept while waiting: the thread ends once the ring is gone
                continue
            for store in stores:  # held here: the arrays stay mapped while they are populated
                self.failed += self._populate(store.ctypes.data, store.strides[0], first, stop, self._page)
            with self._wake:
                if self._stores is stores:
                    self.backed = max(self.backed, stop)
                self._wake.notify_all()

    def _follow_writes(self, owner: object) -> None:
        if self._follower is not None and self._state is not None:
            stores, written, rows, capacity, slot_bytes = self._state(owner)  # held while the loop reads them
            self.failed += self._follower.step(stores, written, rows, capacity, slot_bytes)
