"""The hot ring's series query as one compiled call that keeps the interpreter lock.

Why compiled: done with numpy, "the last N minutes of sensor X in P points" is a handful of
array operations (binary searches, copies, a reduceat), and numpy lets go of the interpreter
lock inside each one. While ingestion runs, every such release hands the lock to the ingest
thread, and taking it back waits at least a switch interval (0.5 ms), so a 0.3 ms query took
1-10 ms. A numba function holds the lock from entry to return: once it starts it runs to its
end, and nothing else in the process can move the ring under it except numpy operations the
ingest thread had already started without the lock (see `HotRing.read_series` for how the
ring keeps those from tearing an answer).

Pure: arrays in, arrays out; no state. Compiled on first use and cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np

# 'reassoc' lets the bucket sums vectorise; NaN and infinity keep their IEEE meaning.
_MATH = {"reassoc", "contract"}


@numba.njit(cache=True, fastmath=_MATH)
def _first_at_or_after(ts: np.ndarray, lo: int, hi: int, x: int) -> int:
    """The first index in ts[lo:hi] (ascending) whose value is >= x, or hi."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ts[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, fastmath=_MATH)
def _first_after(ts: np.ndarray, lo: int, hi: int, x: int) -> int:
    """The first index in ts[lo:hi] (ascending) whose value is > x, or hi."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ts[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, fastmath=_MATH)
def _sum(values: np.ndarray, lo: int, hi: int) -> float:
    total = 0.0
    for i in range(lo, hi):
        total += values[i]
    return total


@numba.njit(cache=True, fastmath=_MATH)
def _span(ts: np.ndarray, first: int, end: int, since: int, until: int) -> tuple[int, int, int]:
    """Where the readings a row was written with in the order [first, end) begin (the slot
    of the oldest), and the logical indexes [lo, hi) of those with since <= ts <= until."""
    cap = len(ts)
    count = end - first
    start = first % cap
    # Logical index i (0 = oldest) lives in slot (start + i) % cap: search the two runs.
    first_run = min(count, cap - start)
    lo = _first_at_or_after(ts, start, start + first_run, since) - start
    if lo == first_run and count > first_run:
        lo = first_run + _first_at_or_after(ts, 0, count - first_run, since)
    hi = _first_after(ts, start, start + first_run, until) - start
    if hi == first_run and count > first_run:
        hi = first_run + _first_after(ts, 0, count - first_run, until)
    return start, lo, hi


@numba.njit(cache=True, fastmath=_MATH)
def ring_series(ts: np.ndarray, value: np.ndarray, first: int, end: int, since: int, until: int,
                points: int) -> tuple[np.ndarray, np.ndarray]:
    """Readings with since <= ts <= until among those a ring row was written with in the
    order [first, end) (the row's n-th reading sits in slot n % capacity; end - first <=
    capacity; they ascend in ts), in at most `points` buckets.

    Bucket b of the m matching readings holds the readings [b*m // P, (b+1)*m // P) in ts
    order; it is answered by the ts of its first reading and the mean of its values.
    `points` < 1 means every reading.
    """
    cap = len(ts)
    start, lo, hi = _span(ts, first, end, since, until)
    m = max(hi - lo, 0)
    p = m if points < 1 or m <= points else points
    out_ts = np.empty(p, np.int64)
    out_value = np.empty(p, np.float64)
    for b in range(p):
        a = lo + (m * b) // p
        e = lo + (m * (b + 1)) // p
        slot_a = start + a
        slot_a = slot_a - cap if slot_a >= cap else slot_a
        out_ts[b] = ts[slot_a]
        slot_e = start + e
        slot_e = slot_e - cap if slot_e >= cap else slot_e
        if slot_a < slot_e:
            total = _sum(value, slot_a, slot_e)
        else:  # the bucket wraps around the end of the row
            total = _sum(value, slot_a, cap) + _sum(value, 0, slot_e)
        out_value[b] = total / (e - a)
    return out_ts, out_value


@numba.njit(cache=True, fastmath=_MATH)
def ring_bands(ts: np.ndarray, value: np.ndarray, first: int, end: int, since: int, until: int,
               bucket_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The readings with since <= ts <= until of a ring row (as `ring_series` reads it) in
    buckets of `bucket_ms` aligned on multiples of it: each bucket's start, min, max, mean
    and count (the `min`/`max`/`avg`/`count(*)` of the dashboard's SQL, per bucket)."""
    cap = len(ts)
    start, lo, hi = _span(ts, first, end, since, until)
    m = max(hi - lo, 0)
    out_t = np.empty(m, np.int64)
    out_min = np.empty(m, np.float64)
    out_max = np.empty(m, np.float64)
    out_sum = np.empty(m, np.float64)
    out_n = np.empty(m, np.int64)
    b = -1
    for i in range(lo, hi):
        slot = start + i
        slot = slot - cap if slot >= cap else slot
        t = (ts[slot] // bucket_ms) * bucket_ms
        v = value[slot]
        if b < 0 or t != out_t[b]:
            b += 1
            out_t[b] = t
            out_min[b] = v
            out_max[b] = v
            out_sum[b] = v
            out_n[b] = 1
        else:
            # (values are finite: ingestion quarantines the others)
            if v < out_min[b]:
                out_min[b] = v
            if v > out_max[b]:
                out_max[b] = v
            out_sum[b] += v
            out_n[b] += 1
    k = b + 1
    return out_t[:k], out_min[:k], out_max[:k], out_sum[:k] / out_n[:k], out_n[:k]


@numba.njit(cache=True)
def coded_check(last: np.ndarray, covered: np.ndarray, written: np.ndarray, ts_flat: np.ndarray, reserved: int,
                key_of_code: np.ndarray, codes: np.ndarray, ts: np.ndarray, cap: int, window_ms: int) -> int:
    """Whether a batch (row i: sensor `key_of_code[codes[i]]`, in arrival order) can be appended
    as it is (`HotRing.insert_coded`): -1 if not (a reading not newer than its sensor's
    newest, or out of order within its sensor); 1 if it can, but would push a reading still
    inside the window out of some row (the ring should grow first); 0 otherwise. Changes nothing."""
    count = np.zeros(len(key_of_code), np.int64)
    first = np.empty(len(key_of_code), np.int64)
    newest = np.empty(len(key_of_code), np.int64)
    for i in range(len(codes)):
        c = codes[i]
        t = ts[i]
        if count[c] == 0:
            key = key_of_code[c]
            if not (t > last[key] and t >= covered[key]):
                return -1
            first[c] = t
        elif t <= newest[c]:
            return -1
        newest[c] = t
        count[c] += 1
    for c in range(len(key_of_code)):
        n = count[c]
        if n == 0:
            continue
        key = key_of_code[c]
        w = written[key]
        if min(w, cap) + n > cap:
            # What the write pushes out first: the row's oldest reading, or its own first.
            oldest = ts_flat[key * reserved + (w % cap if w > cap else 0)] if w > 0 else first[c]
            if oldest >= newest[c] - window_ms:
                return 1
    return 0


@numba.njit(cache=True)
def coded_append(ts_flat: np.ndarray, value_flat: np.ndarray, reserved: int, written: np.ndarray,
                 pending: np.ndarray, last: np.ndarray, covered: np.ndarray, key_of_code: np.ndarray,
                 codes: np.ndarray, ts: np.ndarray, value: np.ndarray, cap: int, window_ms: int) -> bool:
    """`HotRing._append` of a batch `coded_check` passed, in one call that keeps the interpreter
    lock, straight from the rows in arrival order (no grouping by sensor first): announce
    (`pending`), write each sensor's rows into its ring slots (only its last `cap` can
    survive), publish (`written`, `last`), move `covered` past what a wrap pushed out. True if
    a wrapped row's oldest reading is still inside the window (the ring should grow)."""
    count = np.zeros(len(key_of_code), np.int64)
    for i in range(len(codes)):
        count[codes[i]] += 1
    for c in range(len(key_of_code)):
        if count[c]:
            key = key_of_code[c]
            pending[key] = written[key] + count[c]
    rank = np.zeros(len(key_of_code), np.int64)
    newest = np.empty(len(key_of_code), np.int64)
    for i in range(len(codes)):
        c = codes[i]
        j = rank[c]
        rank[c] = j + 1
        newest[c] = ts[i]
        if j >= count[c] - cap:
            key = key_of_code[c]
            pos = key * reserved + (written[key] + j) % cap
            ts_flat[pos] = ts[i]
            value_flat[pos] = value[i]
    grow = False
    for c in range(len(key_of_code)):
        n = count[c]
        if n == 0:
            continue
        key = key_of_code[c]
        now_written = written[key] + n
        written[key] = now_written
        last[key] = newest[c]
        if now_written > cap:
            oldest = ts_flat[key * reserved + now_written % cap]
            if oldest > covered[key]:
                covered[key] = oldest
            if oldest >= newest[c] - window_ms:
                grow = True
    return grow


@numba.njit(cache=True)
def merge_rows(ts_flat: np.ndarray, value_flat: np.ndarray, reserved: int, written: np.ndarray,
               pending: np.ndarray, last: np.ndarray, covered: np.ndarray, seq: np.ndarray, keys: np.ndarray,
               starts: np.ndarray, counts: np.ndarray, ts: np.ndarray, value: np.ndarray, found: np.ndarray,
               first: int, stop: int, cap: int, window_ms: int, may_grow: bool) -> int:
    """`HotRing._merge_row` for keys `first:stop` of a batch, in one call that keeps the
    interpreter lock: key `keys[j]`'s readings are `ts[starts[j]:starts[j] + counts[j]]`
    (ascending, none repeated), merged into its row in ts order; `found` marks those the row
    holds already. A row is rewritten between two increments of its `seq` (odd meanwhile),
    oldest first from slot 0. Returns `stop`, or (with `may_grow`) the first key whose merge
    would push a reading still inside the window out, before it changes anything of that key
    (the ring should grow, then merge from that key on)."""
    for j in range(first, stop):
        key = keys[j]
        base = key * reserved
        w = written[key]
        n = min(w, cap)
        shift = w % cap if w > cap else 0
        old_ts = np.empty(n, np.int64)
        old_value = np.empty(n, np.float64)
        for i in range(n):
            slot = base + (shift + i) % cap
            old_ts[i] = ts_flat[slot]
            old_value[i] = value_flat[slot]
        begin, end = starts[j], starts[j] + counts[j]
        fresh = 0
        for i in range(begin, end):
            hit = False
            if n > 0:
                at = _first_at_or_after(old_ts, 0, n, ts[i])
                hit = at < n and old_ts[at] == ts[i]
            found[i] = hit
            if not hit:
                fresh += 1
        m = n + fresh
        merged_ts = np.empty(m, np.int64)
        merged_value = np.empty(m, np.float64)
        a, b, out = 0, begin, 0
        while out < m:
            while b < end and found[b]:
                b += 1
            if b < end and (a >= n or ts[b] < old_ts[a]):
                merged_ts[out], merged_value[out] = ts[b], value[b]
                b += 1
            else:
                merged_ts[out], merged_value[out] = old_ts[a], old_value[a]
                a += 1
            out += 1
        if may_grow and m > cap and merged_ts[m - cap - 1] >= merged_ts[m - 1] - window_ms:
            return j
        kept = min(m, cap)
        if kept < m:
            covered[key] = max(covered[key], merged_ts[m - kept])
        seq[key] += 1
        for i in range(kept):
            ts_flat[base + i] = merged_ts[m - kept + i]
            value_flat[base + i] = merged_value[m - kept + i]
        written[key] = kept
        pending[key] = kept
        last[key] = merged_ts[m - 1]
        seq[key] += 1
    return stop


@numba.njit(cache=True)
def ring_rows(written: np.ndarray, keys: int, capacity: int) -> int:
    """Readings the ring holds: each of the first `keys` rows' writes, at most `capacity`.
    Compiled for the lock, as the rest: numpy's minimum and sum over a million rows let go of
    it twice, and a gauge polled every 50 ms paid a switch interval for each."""
    total = 0
    for i in range(min(keys, len(written))):  # a re-layout may grow `written` after `keys`
        total += min(written[i], capacity)
    return total


def warm() -> None:
    """Compile the kernels (or load them from the cache) ahead of the first query and write:
    that holds the interpreter lock for 0.5-3 s, which must not land in the middle of ingestion.
    The ring's readings are strided (a slot's ts and value side by side, `tiers.hot`): each
    kernel is compiled for the arrays the ring hands it, another signature would be compiled in
    the ingest thread."""
    ts, value = _slots_as_ring_has_them(2)
    ring_series(ts, value, 0, 2, 0, 1, 1)
    ring_bands(ts, value, 0, 2, 0, 1, 1)
    ring_rows(np.zeros(1, np.int64), 1, 2)
    # The writes, with the types `HotRing.insert_coded` hands them (int32 key ids, uint32 codes,
    # contiguous int64 ts and float64 values).
    i64, f64, i32, u32 = np.zeros(1, np.int64), np.zeros(1, np.float64), np.zeros(1, np.int32), np.zeros(1, np.uint32)
    coded_check(i64, i64, i64, ts, 2, i32, u32, np.ones(1, np.int64), 2, 1)
    coded_append(ts, value, 2, np.zeros(1, np.int64), np.zeros(1, np.int64),
                 np.zeros(1, np.int64), np.zeros(1, np.int64), i32, u32, np.ones(1, np.int64), f64, 2, 1)
    # And the exact merge of late readings (`HotRing._merge_compiled`: int32 key ids, as ingestion's).
    merge_rows(ts, value, 2, np.zeros(1, np.int64), np.zeros(1, np.int64),
               np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64), i32, np.zeros(1, np.int64),
               np.ones(1, np.int64), np.ones(1, np.int64), f64, np.zeros(1, np.bool_), 0, 1, 2, 1, True)


def _slots_as_ring_has_them(n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` slots laid out as `tiers.hot.HotRing` lays them: ts and value side by side."""
    slots = np.zeros(2 * n, np.int64)
    return slots[0::2], slots.view(np.float64)[1::2]
