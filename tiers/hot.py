"""The hot ring: the last window of every sensor in memory, 16 bytes a reading.

Besides serving dashboards, the ring is the ingest path's duplicate detector: for each
sensor it knows every stored reading with `ts >= covered_from`, so a redelivered reading in
that range is recognised and dropped. Readings older than what the ring covers are passed on
as *unverified*, to be checked against the cold tier instead.
Pure data structure: no I/O, no clock; not thread-safe (the caller holds a lock).
"""

from __future__ import annotations

import numpy as np

_BYTES_PER_READING = 16  # int64 ts + float64 value
_MIN_CAPACITY = 64


class _Series:
    """One sensor's readings, sorted by ts, in arrays[start:end]."""

    __slots__ = ("ts", "value", "start", "end", "covered_from")

    def __init__(self, covered_from: int) -> None:
        self.ts = np.empty(_MIN_CAPACITY, dtype=np.int64)
        self.value = np.empty(_MIN_CAPACITY, dtype=np.float64)
        self.start = 0
        self.end = 0
        self.covered_from = covered_from

    def __len__(self) -> int:
        return self.end - self.start

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ts[self.start:self.end], self.value[self.start:self.end]

    def _make_room(self, extra: int) -> None:
        size = len(self)
        if self.end + extra <= len(self.ts):
            return
        capacity = max(_MIN_CAPACITY, len(self.ts))
        while capacity < 2 * (size + extra):
            capacity *= 2
        if capacity > len(self.ts) or self.start > 0:
            ts, value = np.empty(capacity, np.int64), np.empty(capacity, np.float64)
            ts[:size], value[:size] = self.view()
            self.ts, self.value, self.start, self.end = ts, value, 0, size

    def add(self, ts: np.ndarray, value: np.ndarray) -> None:
        """Add readings that are sorted by ts and not present yet."""
        if len(self) and ts[0] <= self.ts[self.end - 1]:
            old_ts, old_value = self.view()
            merged_ts = np.concatenate([old_ts, ts])
            order = np.argsort(merged_ts, kind="stable")
            merged_value = np.concatenate([old_value, value])[order]
            merged_ts = merged_ts[order]
            self.start = self.end = 0
            self._make_room(len(merged_ts))
            self.ts[:len(merged_ts)], self.value[:len(merged_ts)] = merged_ts, merged_value
            self.end = len(merged_ts)
            return
        self._make_room(len(ts))
        self.ts[self.end:self.end + len(ts)] = ts
        self.value[self.end:self.end + len(ts)] = value
        self.end += len(ts)

    def trim_before(self, cutoff: int) -> int:
        """Forget readings older than `cutoff`; returns how many were dropped."""
        ts, _ = self.view()
        drop = int(np.searchsorted(ts, cutoff, side="left"))
        self.start += drop
        self.covered_from = max(self.covered_from, cutoff)
        return drop


class HotRing:
    """Per-sensor recent readings with duplicate detection and a memory budget."""

    def __init__(self, *, window_ms: int, memory_budget: int, covered_from: int) -> None:
        self.window_ms = window_ms
        self.max_readings = max(1, memory_budget // _BYTES_PER_READING)
        self.default_covered_from = covered_from
        self._series: dict[int, _Series] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

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
        order = np.lexsort((ts, key_ids))
        sorted_keys, sorted_ts = key_ids[order], ts[order]
        repeated = np.zeros(n, dtype=bool)
        repeated[1:] = (sorted_keys[1:] == sorted_keys[:-1]) & (sorted_ts[1:] == sorted_ts[:-1])
        keep[order[repeated]] = False
        bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [n]])
        for a, b in zip(starts.tolist(), ends.tolist()):
            rows = order[a:b]
            rows = rows[~repeated[a:b]]
            key = int(key_ids[rows[0]])
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(self.default_covered_from)
            batch_ts = ts[rows]
            old = batch_ts < series.covered_from
            if old.any():
                verified[rows[old]] = False
                rows, batch_ts = rows[~old], batch_ts[~old]
                if len(rows) == 0:
                    continue
            if len(series) and batch_ts[0] <= series.ts[series.end - 1]:
                # Only the part that overlaps what is stored can hold duplicates.
                stored, _ = series.view()
                pos = np.searchsorted(stored, batch_ts)
                found = (pos < len(stored)) & (stored[np.minimum(pos, len(stored) - 1)] == batch_ts)
                if found.any():
                    keep[rows[found]] = False
                    rows, batch_ts = rows[~found], batch_ts[~found]
                    if len(rows) == 0:
                        continue
            series.add(batch_ts, value[rows])
            self._count += len(rows)
            newest = int(series.ts[series.end - 1])
            if int(series.ts[series.start]) < newest - self.window_ms:
                self._count -= series.trim_before(newest - self.window_ms)
        if self._count > self.max_readings:
            self._shed()
        return keep, verified

    def _shed(self) -> None:
        # Over budget: every series gives up its oldest quarter. Coverage shrinks with it,
        # so duplicate detection for those readings moves to the cold tier; nothing is lost.
        for series in self._series.values():
            if len(series) > 1:
                ts, _ = series.view()
                self._count -= series.trim_before(int(ts[len(ts) // 4]))

    def series(self, key: int, *, since: int | None = None, until: int | None = None,
               points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A sensor's readings in [since, until], averaged into at most `points` buckets."""
        found = self._series.get(key)
        if found is None:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        ts, value = found.view()
        lo = 0 if since is None else int(np.searchsorted(ts, since, side="left"))
        hi = len(ts) if until is None else int(np.searchsorted(ts, until, side="right"))
        ts, value = ts[lo:hi].copy(), value[lo:hi].copy()
        if points is None or len(ts) <= points or points < 1:
            return ts, value
        edges = np.linspace(0, len(ts), points + 1).astype(np.int64)
        sums = np.add.reduceat(value, edges[:-1])
        counts = np.diff(edges)
        return ts[edges[:-1]], sums / counts

    def latest(self, key: int) -> tuple[int, float] | None:
        found = self._series.get(key)
        if found is None or not len(found):
            return None
        return int(found.ts[found.end - 1]), float(found.value[found.end - 1])

    def keys(self) -> list[int]:
        return list(self._series)
