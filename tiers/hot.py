"""The hot ring: the most recent readings of every sensor in memory, 16 bytes a reading.

Layout: one row per sensor key in a 2-D array used as circular buffers of `capacity` slots,
each slot a reading's ts (int64) and value (float64) side by side, so that a whole batch is
written with a few vectorised numpy operations instead of a Python loop over its sensors.
Each row holds its readings in ts order, oldest at `written % capacity` once it has wrapped.
The capacity grows (doubling) while a sensor's buffer holds less than the configured window
and the memory budget allows; new sensors that would overflow the budget halve it instead.

Growing must not stall ingestion: copying a ring of a few hundred megabytes takes the
ingest thread (and so alerting) away for a good part of a second. So each row is reserved
at the largest capacity the budget allows for the current number of rows, as virtual
memory that the kernel backs only when written (`np.empty` does not touch it), and the
arrays in use are views of its first `capacity` columns. Growing before any row wraps,
the usual case since `_reserve` grows ahead of a write, only widens the views.

Why a reading's ts and value side by side, not in two arrays: a batch writes a few readings of
each of its sensors, and each sensor's row is elsewhere in memory. With two arrays that was two
cache lines and two pages a sensor; side by side, one of each. At 100,000 sensors (a row's
readings narrower than a page) it also halves the pages the ring backs while the fab's sensors
appear: 200,000 page faults (~2 us each, more in a virtual machine) became 100,000.

The ring is also the ingest path's duplicate detector: for each sensor it knows every
stored reading with `ts >= covered[key]`, so a redelivered reading in that range is dropped.
Readings older than that (late data, or pushed out by the budget) are passed on as
*unverified*, to be checked against the cold tier. Pure data structure: no I/O, no clock.

Threads: writers (`insert`, `insert_coded`) are serialised by the caller's lock;
`read_series` needs none. An append first announces how far the row will be written
(`_pending`), then writes the slots, then moves `_written`: a reader that sees
`pending > written` leaves out the oldest readings that write is putting new ones over, so
an append in progress never makes it wait. The rarer writes that rewrite a row (an
out-of-order merge) make its sequence number odd while they run, and changes of layout
(capacity, rows) do the same to `_layout`: a reader that sees either odd, or changed by the
time it is done, tries again.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import numpy as np

from tiers import prefault

T = TypeVar("T")


class _Kernels(NamedTuple):
    """tiers.hotkernel's compiled writes and count, by name."""

    check: Callable  # coded_check
    append: Callable  # coded_append
    rows: Callable  # ring_rows, for `len`
    merge: Callable  # merge_rows, for late readings


# The kernels once `use_compiled_writes` has loaded them; numpy until then (a process that
# never loads numba: tests, tools).
_compiled: _Kernels | None = None
# The loop that backs new rows' first pages off the ingest thread (tiers.prefault), once
# `use_compiled_writes` has loaded it where the system supports it.
_prefault: Callable[[int, int, int, int, int], int] | None = None
# A sensor's buckets: start (epoch ms), min, max, mean, count.
Bands = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]

BYTES_PER_READING = 16  # int64 ts + float64 value, side by side
_INITIAL_CAPACITY = 256
_INITIAL_KEYS = 64
# Rows reserved beyond those asked for, as address space only: while keys double (a fab's
# sensors appear within its first seconds) their rows then stay where they are, instead of
# being re-laid into new arrays at every doubling. A re-layout writes each row into a page of
# its own (a row spans one or more pages), and a page's first write costs ~2 us: the eleven
# doublings up to 100,000 keys took 1.1 s of the ingest thread's CPU. Up to 64 times the
# rows, and no more than the budget holds at a page a row (`_allocate`): with the default
# 2 GiB, one re-layout on the way to 4,096 keys, the next at 524,288.
_SPARE_ROWS_FACTOR = 63
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)
_NEVER = np.iinfo(np.int64).min
_LATEST = np.iinfo(np.int64).max


def _reserve(rows: int, columns: int, dtype, *, spare_rows: int = 0) -> np.ndarray:
    """A (rows, columns) array of address space that memory backs only where written; with
    `spare_rows`, up to that many rows more where the system lends the address space without
    promising memory for it (Linux's MAP_NORESERVE), else exactly `rows`.

    Anonymous mmap rather than np.empty: numpy asks for transparent huge pages on large
    arrays, and then the first write to each row faults in (and zeroes) 2 MiB instead of
    4 KiB, which made one micro-batch take seconds on a reserve of a few GiB."""
    itemsize = np.dtype(dtype).itemsize
    buffer = None
    if spare_rows and _MAP_NORESERVE:
        try:
            buffer = mmap.mmap(-1, max(1, (rows + spare_rows) * columns * itemsize),
                               flags=mmap.MAP_SHARED | _MAP_NORESERVE)
            rows += spare_rows
        except (OSError, OverflowError):  # strict overcommit or a limit on address space
            buffer = None
    if buffer is None:
        buffer = mmap.mmap(-1, max(1, rows * columns * itemsize))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, dtype, count=rows * columns).reshape(rows, columns)


def _give_back_rows(store: np.ndarray, first: int, stop: int) -> None:
    """Free the memory behind rows `first:stop` of a reserved store that is being replaced,
    so that a re-layout copying every row into new arrays holds about one ring, not two, at
    its peak (the budget covers one). The rows' address space stays mapped: a reader still
    holding a view of them reads zeros, and the layout number tells it to try again."""
    buffer = store.base
    while buffer is not None and not isinstance(buffer, mmap.mmap):
        buffer = buffer.obj if isinstance(buffer, memoryview) else getattr(buffer, "base", None)
    if buffer is None or not hasattr(mmap, "MADV_REMOVE"):
        return  # np.empty fallback: freed with the whole array
    row_bytes = store.strides[0]
    # Only whole pages within these rows (rows may be smaller than a page: at a million
    # sensors a row is 2 KiB); a page shared with the next block is left, one per block.
    begin = -(-first * row_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
    end = stop * row_bytes // mmap.PAGESIZE * mmap.PAGESIZE
    if end > begin:
        buffer.madvise(mmap.MADV_REMOVE, begin, end - begin)  # shared anonymous: REMOVE, not DONTNEED


# Rows re-laid at a time: enough that numpy, not Python, does the work (a loop over rows took
# seconds at 100,000 sensors, each time the number of keys doubled), few enough that the
# block's index arrays stay small beside the ring.
_RELAY_BLOCK_BYTES = 16 << 20


class HotRing:
    """Per-sensor recent readings with duplicate detection within a memory budget."""

    def __init__(self, *, window_ms: int, memory_budget: int, covered_from: int) -> None:
        self.window_ms = window_ms
        self.memory_budget = memory_budget
        self.default_covered_from = covered_from
        self.capacity = self._fit_capacity(_INITIAL_CAPACITY, _INITIAL_KEYS)
        self._keys = 0  # rows in use
        self._prefaulter: prefault.RowPrefaulter | None = None
        self._allocate(_INITIAL_KEYS, self.capacity)
        self._written = np.zeros(_INITIAL_KEYS, np.int64)
        self._last = np.full(_INITIAL_KEYS, _NEVER, np.int64)
        self._covered = np.full(_INITIAL_KEYS, covered_from, np.int64)
        self._pending = np.zeros(_INITIAL_KEYS, np.int64)  # per row: `_written` once the append in progress is in
        self._seq = np.zeros(_INITIAL_KEYS, np.int64)  # per row: odd while a merge rewrites it
        self._layout = 0  # odd while arrays or capacity change

    # ---- capacity -----------------------------------------------------------------------
    def _fit_capacity(self, wanted: int, keys: int) -> int:
        """The largest power of two <= wanted that keeps `keys` rows within the budget."""
        limit = max(1, self.memory_budget // (BYTES_PER_READING * max(keys, 1)))
        capacity = 1
        while capacity * 2 <= min(wanted, limit):
            capacity *= 2
        return capacity

    def _allocate(self, rows: int, capacity: int) -> None:
        """Fresh arrays of `rows` rows, each reserved at the budget's largest capacity."""
        reserved = max(capacity, self._fit_capacity(self.memory_budget, rows))
        spare = 0
        if reserved * BYTES_PER_READING >= mmap.PAGESIZE:
            # A row's first reading backs a page, whatever the row's stride: rows to spare
            # only while every one of them, so backed, keeps the ring within budget (rows
            # that share pages take no spare: more of them would not fit).
            spare = max(0, min(rows * _SPARE_ROWS_FACTOR, self.memory_budget // mmap.PAGESIZE - rows))
        try:
            slots = _reserve(rows, 2 * reserved, np.int64, spare_rows=spare)
        except (MemoryError, OSError):  # the system will not promise that much address space
            reserved = capacity
            slots = np.empty((rows, 2 * reserved), np.int64)
        # Slot j of row r: ts at column 2j, value (the same 8 bytes read as float64) at 2j + 1.
        self._slots, self._reserved = slots, reserved
        self._ts_store, self._value_store = slots[:, 0::2], slots.view(np.float64)[:, 1::2]
        # The same as one dimension (row r's slot j at r * reserved + j), for the kernels.
        self._ts_flat = slots.reshape(-1)[0::2]
        self._value_flat = slots.view(np.float64).reshape(-1)[1::2]
        self._prefault_asked = 0  # new stores: their rows are backed from the first again
        self._view(capacity)

    def _view(self, capacity: int) -> None:
        self._ts = self._ts_store[:, :capacity]
        self._value = self._value_store[:, :capacity]
        self.capacity = capacity

    def _linear(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows' readings oldest first, as (ts, value, count) with count slots valid."""
        cap = self.capacity
        count = np.minimum(self._written[rows], cap)
        shift = np.where(self._written[rows] > cap, self._written[rows] % cap, 0)
        columns = (np.arange(cap)[None, :] + shift[:, None]) % cap
        ts = np.take_along_axis(self._ts[rows], columns, axis=1)
        value = np.take_along_axis(self._value[rows], columns, axis=1)
        return ts, value, count

    def _resize(self, capacity: int, rows_needed: int) -> None:
        """Re-lay every row into `capacity` slots (keeping the newest) and room for rows."""
        self._layout += 1
        try:
            self._relay(capacity, rows_needed)
        finally:
            self._layout += 1

    def _relay(self, capacity: int, rows_needed: int) -> None:
        old_cap = self.capacity
        rows = max(rows_needed, len(self._written))
        if (rows <= self._slots.shape[0] and old_cap <= capacity <= self._reserved
                and not (self._written[:self._keys] > old_cap).any()):
            self._view(capacity)  # nothing wrapped: every row's readings stay where they are
            return
        old_ts, old_value = self._ts, self._value
        old_slots = self._slots
        self._allocate(rows, capacity)
        new_ts, new_value = self._ts, self._value
        self._ts, self._value = old_ts, old_value
        block = max(1, _RELAY_BLOCK_BYTES // (8 * max(old_cap, 1)))
        for first in range(0, self._keys, block):  # rare: only when the layout changes
            stop = min(first + block, self._keys)
            self._relay_rows(first, stop, old_cap, capacity, new_ts, new_value)
            _give_back_rows(old_slots, first, stop)
        self._ts, self._value = new_ts, new_value

    def _relay_rows(self, first: int, stop: int, old_cap: int, capacity: int,
                    new_ts: np.ndarray, new_value: np.ndarray) -> None:
        """Rows `first:stop`: the newest readings that fit `capacity`, oldest first, into the
        new arrays (only the slots that hold a reading are written: memory is backed where
        written)."""
        written = self._written[first:stop]
        count = np.minimum(written, old_cap)
        keep = np.minimum(count, capacity)
        widest = int(keep.max(initial=0))
        if widest:
            # The newest `keep` readings end just before the write position (wrapping round).
            end = np.where(written > old_cap, written % old_cap, count)
            columns = ((end - keep)[:, None] + np.arange(widest)[None, :]) % old_cap
            moved_ts = np.take_along_axis(self._ts[first:stop], columns, axis=1)
            moved_value = np.take_along_axis(self._value[first:stop], columns, axis=1)
            if int(keep.min()) == widest:
                new_ts[first:stop, :widest] = moved_ts
                new_value[first:stop, :widest] = moved_value
            else:
                inside = np.arange(widest)[None, :] < keep[:, None]
                rows, slots = np.nonzero(inside)
                rows += first
                new_ts[rows, slots] = moved_ts[inside]
                new_value[rows, slots] = moved_value[inside]
            cut = np.nonzero(keep < count)[0]
            if len(cut):
                self._covered[first + cut] = np.maximum(self._covered[first + cut], new_ts[first + cut, 0])
        self._written[first:stop] = keep
        self._pending[first:stop] = keep

    def _ensure_keys(self, rows_needed: int) -> None:
        self._grow_keys(rows_needed)
        if _prefault is not None and prefault.ahead(rows_needed) > self._prefault_asked + prefault.MIN_AHEAD_ROWS // 2:
            self._prefault_ahead()

    def _prefault_ahead(self) -> None:
        """Have the first page of the rows some way past those in use (`prefault.ahead`)
        backed by a thread of their own (tiers.prefault), not by the first reading of each in
        this one."""
        if _prefault is None:
            return
        if self._prefaulter is None:
            self._prefaulter = prefault.RowPrefaulter(self, _prefault, mmap.PAGESIZE, follow=HotRing._follow_state)
        self._prefault_asked = prefault.ahead(self._keys)  # rows past the stores': asked once
        self._prefaulter.ask((self._slots,), min(self._prefault_asked, self._slots.shape[0]))

    def _follow_state(self) -> tuple[tuple[np.ndarray, ...], np.ndarray, int, int, int]:
        """What the prefault thread reads to back rows ahead of their writes
        (tiers.prefault.RowFollower): the store, each row's slots written, the rows in use, the
        capacity and a slot's bytes, each read once, without the lock (a stale one only backs a
        page later)."""
        return (self._slots,), self._written, self._keys, self.capacity, BYTES_PER_READING

    def _grow_keys(self, rows_needed: int) -> None:
        if rows_needed <= len(self._written):
            if rows_needed > self._keys:
                self._keys = rows_needed
            return
        rows = max(rows_needed, 2 * len(self._written))
        grow = rows - len(self._written)
        self._layout += 1
        try:
            self._written = np.concatenate([self._written, np.zeros(grow, np.int64)])
            self._last = np.concatenate([self._last, np.full(grow, _NEVER, np.int64)])
            self._covered = np.concatenate([self._covered, np.full(grow, self.default_covered_from, np.int64)])
            self._seq = np.concatenate([self._seq, np.zeros(grow, np.int64)])
            self._pending = np.concatenate([self._pending, np.zeros(grow, np.int64)])
        finally:
            self._layout += 1
        self._resize(self._fit_capacity(self.capacity, rows), rows)
        self._keys = rows_needed

    def _maybe_grow(self, touched: np.ndarray) -> None:
        # A wrapped buffer whose oldest reading is still inside the window is too small.
        wrapped = touched[self._written[touched] > self.capacity]
        if len(wrapped) == 0:
            return
        oldest = self._ts[wrapped, self._written[wrapped] % self.capacity]
        if np.all(oldest < self._last[wrapped] - self.window_ms):
            return
        self._double()

    def _double(self) -> bool:
        """Double every row's capacity if the budget allows it (False if it does not)."""
        capacity = self._fit_capacity(self.capacity * 2, len(self._written))
        if capacity <= self.capacity:
            return False
        self._resize(capacity, len(self._written))
        return True

    # ---- writes -------------------------------------------------------------------------
    def insert(self, key_ids: np.ndarray, ts: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add a batch; return (keep, verified) masks over its rows.

        `keep` is False for a reading already stored (or repeated within the batch);
        `verified` is False for a reading older than what the ring covers: it is kept, not
        added to the ring, and must be checked for duplicates against the cold tier.
        """
        n = len(ts)
        keep = np.ones(n, dtype=bool)
        verified = np.ones(n, dtype=bool)
        if n == 0:
            return keep, verified
        self._ensure_keys(int(key_ids.max()) + 1)
        order = np.lexsort((ts, key_ids))
        k, t = key_ids[order], ts[order]
        repeated = np.zeros(n, dtype=bool)
        repeated[1:] = (k[1:] == k[:-1]) & (t[1:] == t[:-1])
        old = t < self._covered[k]
        keep[order[repeated]] = False
        verified[order[old]] = False
        usable = ~repeated & ~old
        if not usable.all():
            order, k, t = order[usable], k[usable], t[usable]
            if len(order) == 0:
                return keep, verified
        # Rows newer than everything stored for their sensor go the fast way; a sensor
        # with any row at or before its newest stored reading takes the slow, exact way.
        slow_keys = np.unique(k[t <= self._last[k]])
        if len(slow_keys):
            slow = np.isin(k, slow_keys)
            if _compiled is not None:
                rows = order[slow]
                keep[rows[self._merge_compiled(k[slow], ts[rows], value[rows])]] = False
            else:
                for key in slow_keys.tolist():
                    rows = order[slow & (k == key)]
                    found = self._merge(key, ts[rows], value[rows])
                    keep[rows[found]] = False
            order, k, t = order[~slow], k[~slow], t[~slow]
        if len(order):
            starts, counts = _runs(k)
            keys = k[starts]
            if (np.minimum(self._written[keys], self.capacity) + counts).max() > self.capacity:
                self._reserve(keys, starts, counts, t)
            self._append(order, k, t, value, starts, counts)
        return keep, verified

    def insert_coded(self, key_of_code: np.ndarray, codes: np.ndarray, ts: np.ndarray,
                     value: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The fast path of `insert` for a batch of one machine whose row i is sensor
        `key_of_code[codes[i]]` (the batch's dictionary of names as key ids; int32, codes
        uint32), by the compiled kernels (tiers.hotkernel): the rows are written in the order
        they came, without sorting them by sensor first, in two calls that keep the interpreter
        lock (instead of some twenty numpy operations that each may hand it to another thread
        mid-batch).

        Returns None, having changed nothing, unless the kernels are loaded, every row is newer
        than everything stored for its sensor and each sensor's rows arrive in ts order: the
        common case. Then the caller takes the general way, `insert`."""
        if _compiled is None or len(key_of_code) == 0:
            return None
        check, append = _compiled.check, _compiled.append
        self._ensure_keys(int(key_of_code.max()) + 1)
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        while True:
            fits = check(self._last, self._covered, self._written, self._ts_flat, self._reserved,
                         key_of_code, codes, ts, self.capacity, self.window_ms)
            if fits < 0:
                return None
            # Would push out readings still inside the window: grow first, while the budget allows.
            if fits == 0 or not self._double():
                break
        grow = append(self._ts_flat, self._value_flat, self._reserved, self._written,
                      self._pending, self._last, self._covered, key_of_code, codes, ts,
                      np.ascontiguousarray(value, dtype=np.float64), self.capacity, self.window_ms)
        if grow:
            self._double()
        n = len(ts)
        return np.ones(n, dtype=bool), np.ones(n, dtype=bool)

    def _reserve(self, keys: np.ndarray, starts: np.ndarray, counts: np.ndarray, t: np.ndarray) -> None:
        """Grow before a write that would push readings still inside the window out."""
        newest = t[starts + counts - 1]
        while True:
            cap = self.capacity
            need = np.minimum(self._written[keys], cap) + counts
            over = need > cap
            if not over.any():
                return
            rows, first = keys[over], t[starts[over]]
            stored = self._written[rows] > 0
            oldest_slot = np.where(self._written[rows] > cap, self._written[rows] % cap, 0)
            oldest = np.where(stored, self._ts[rows, oldest_slot], first)
            if not np.any(oldest >= newest[over] - self.window_ms):
                return
            if not self._double():
                return

    def _append(self, order: np.ndarray, k: np.ndarray, t: np.ndarray, value: np.ndarray,
                starts: np.ndarray, counts: np.ndarray) -> None:
        """Write rows (sorted by key, then ts; all newer than their key's newest)."""
        cap = self.capacity
        keys = k[starts]
        rank = np.arange(len(k)) - np.repeat(starts, counts)
        # Only each key's last `cap` rows can survive; writing fewer keeps slots unique.
        survive = rank >= np.repeat(counts - cap, counts)
        slots = (np.repeat(self._written[keys], counts) + rank) % cap
        # Flat positions in the stores (row * reserved + slot): one index for both arrays.
        where = k[survive].astype(np.int64) * self._reserved + slots[survive]
        new_ts, new_value = t[survive], value[order[survive]]
        written = self._written[keys] + counts
        # Announce, write, then publish: readers leave out the slots being written over.
        self._pending[keys] = written
        self._ts_flat[where] = new_ts
        self._value_flat[where] = new_value
        self._written[keys] = written
        self._last[keys] = t[starts + counts - 1]
        wrapped = written > cap
        if wrapped.any():
            rows = keys[wrapped]
            self._covered[rows] = np.maximum(self._covered[rows], self._ts[rows, written[wrapped] % cap])
            self._maybe_grow(rows)

    def _merge_compiled(self, row_keys: np.ndarray, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        """`_merge` of every key of a batch in compiled calls (tiers.hotkernel.merge_rows):
        `row_keys` ascending, each key's readings ascending in ts; the mask of those already
        stored. A late message of a hundred sensors took ~4 ms the numpy way (some twenty small
        operations a key): a tenth of the ingest thread at 100,000 sensors, whose simulated
        gateways send a message late now and then."""
        assert _compiled is not None
        starts, counts = _runs(row_keys)
        keys = np.ascontiguousarray(row_keys[starts])
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        value = np.ascontiguousarray(value, dtype=np.float64)
        found = np.zeros(len(ts), dtype=bool)

        def merge(first: int, stop: int, may_grow: bool) -> int:  # the stores as they are now
            return _compiled.merge(self._ts_flat, self._value_flat, self._reserved,
                                   self._written, self._pending, self._last, self._covered, self._seq, keys,
                                   starts, counts, ts, value, found, first, stop, self.capacity, self.window_ms,
                                   may_grow)

        j = 0
        while j < len(keys):
            stopped = merge(j, len(keys), True)
            if stopped == len(keys):
                break
            if self._double():  # grown: that key again, into longer rows
                j = stopped
                continue
            # The budget allows no more: keep its newest readings, as `_merge_row` does.
            merge(stopped, stopped + 1, False)
            j = stopped + 1
        return found

    def _merge(self, key: int, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Exact insert of out-of-order rows for one key; returns the mask of duplicates."""
        self._seq[key] += 1
        try:
            return self._merge_row(key, ts, value)
        finally:
            self._seq[key] += 1

    def _merge_row(self, key: int, ts: np.ndarray, value: np.ndarray) -> np.ndarray:
        cap = self.capacity
        old_ts, old_value, count = self._linear(np.array([key]))
        n = int(count[0])
        old_ts, old_value = old_ts[0, :n], old_value[0, :n]
        pos = np.searchsorted(old_ts, ts)
        found = (pos < n) & (old_ts[np.minimum(pos, max(n - 1, 0))] == ts) if n else np.zeros(len(ts), bool)
        new_ts, new_value = ts[~found], value[~found]
        merged_ts = np.concatenate([old_ts, new_ts])
        order = np.argsort(merged_ts, kind="stable")
        merged_ts, merged_value = merged_ts[order], np.concatenate([old_value, new_value])[order]
        while len(merged_ts) > cap and merged_ts[-cap - 1] >= merged_ts[-1] - self.window_ms:
            if not self._double():
                break
            cap = self.capacity
        kept = min(len(merged_ts), cap)
        if kept < len(merged_ts):
            self._covered[key] = max(self._covered[key], int(merged_ts[-kept]))
        self._ts[key, :kept] = merged_ts[-kept:]
        self._value[key, :kept] = merged_value[-kept:]
        self._written[key] = self._pending[key] = kept
        self._last[key] = merged_ts[-1]
        return found

    # ---- reads ------------------------------------------------------------------------------
    def __len__(self) -> int:
        if _compiled is not None:  # one compiled call, which keeps the interpreter lock
            return int(_compiled.rows(self._written, self._keys, self.capacity))
        return int(np.minimum(self._written[:self._keys], self.capacity).sum())

    @property
    def memory_bytes(self) -> int:
        """Bytes the rows in use can fill (the reserve beyond `capacity`, and the spare rows,
        are never written)."""
        return len(self._written) * self.capacity * BYTES_PER_READING

    def covered_from(self, key: int) -> int:
        return int(self._covered[key]) if key < self._keys else self.default_covered_from

    def series(self, key: int, *, since: int | None = None, until: int | None = None,
               points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A sensor's readings in [since, until], averaged into at most `points` buckets
        (see `hotkernel.ring_series`); for a caller that holds the writers' lock."""
        answer = self.read_series(key, since=since, until=until, points=points)
        if answer is None:
            raise RuntimeError("the hot ring changed during a read under the writers' lock")
        return answer

    def read_series(self, key: int, *, since: int | None = None, until: int | None = None,
                    points: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """`series` without the writers' lock (see the module's note): None if the row was
        being rewritten, re-laid or written over whole (the caller tries again later, or
        takes the lock)."""
        from tiers import hotkernel  # compiled code: loaded on first use
        lo, hi = _NEVER if since is None else int(since), _LATEST if until is None else int(until)
        return self._read_row(key, lambda ts, value, first, end: hotkernel.ring_series(
            ts, value, first, end, lo, hi, 0 if points is None else int(points)),
            lambda: (np.empty(0, np.int64), np.empty(0, np.float64)))

    def read_bands(self, key: int, *, since: int, bucket_ms: int, until: int | None = None) -> Bands | None:
        """A sensor's readings in [since, until] as buckets of `bucket_ms` (start, min, max,
        mean, count: `hotkernel.ring_bands`), without the writers' lock, as `read_series`."""
        from tiers import hotkernel
        hi = _LATEST if until is None else int(until)
        return self._read_row(key, lambda ts, value, first, end: hotkernel.ring_bands(
            ts, value, first, end, int(since), hi, int(bucket_ms)),
            lambda: (np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float64),
                     np.empty(0, np.float64), np.empty(0, np.int64)))

    def _read_row(self, key: int, read: Callable[[np.ndarray, np.ndarray, int, int], T],
                  empty: Callable[[], T]) -> T | None:
        """`read` of row `key`'s readings in the order they were written, [first, end) (see
        the module's note on readers); None if the row changed under it."""
        layout = self._layout
        if layout & 1:
            return None
        if key >= self._keys:
            return empty()
        seqs, written, pending = self._seq, self._written, self._pending
        seq = int(seqs[key])
        if seq & 1:
            return None
        end = int(written[key])  # before `pending`: an append moves pending first
        announced = int(pending[key])
        if announced - end >= self.capacity:
            return None  # the append in progress writes over the whole row
        # Readers of the row's n-th reading need it in slot n % capacity still: not
        # among the oldest that the append in progress (up to `announced`) writes over.
        first = max(0, end - self.capacity, announced - self.capacity)
        answer = read(self._ts[key], self._value[key], first, end)
        if int(pending[key]) == announced and int(seqs[key]) == seq and self._layout == layout:
            return answer
        return None

    def span(self) -> tuple[int, int] | None:
        """(oldest, newest) ts held, over every sensor; None when empty."""
        rows = np.flatnonzero(self._written[:self._keys] > 0)
        if len(rows) == 0:
            return None
        slots = np.where(self._written[rows] > self.capacity, self._written[rows] % self.capacity, 0)
        return int(self._ts[rows, slots].min()), int(self._last[rows].max())

    def latest(self, key: int) -> tuple[int, float] | None:
        if key >= self._keys or self._written[key] == 0:
            return None
        slot = (self._written[key] - 1) % self.capacity
        return int(self._ts[key, slot]), float(self._value[key, slot])


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal keys starts in `keys` (sorted), and how long it is."""
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return starts, np.diff(np.append(starts, len(keys)))


def use_compiled_writes() -> None:
    """Compile (or load) tiers.hotkernel and write with it from now on, and back new rows'
    first pages ahead of their first reading (tiers.prefault): for a process that ingests,
    beside recovery, before ingestion starts (compiling holds the interpreter lock)."""
    global _compiled, _prefault
    from tiers import hotkernel
    hotkernel.warm()
    _compiled = _Kernels(hotkernel.coded_check, hotkernel.coded_append, hotkernel.ring_rows, hotkernel.merge_rows)
    _prefault = prefault.loaded()
