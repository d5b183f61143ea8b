"""Re-laying the ring (more keys, another capacity) keeps each sensor's newest readings in
order, whatever the rows' fill and wrap, and a ring of 100,000 sensors gets there by numpy
in blocks of rows rather than by a loop over them; where the system lends address space,
keys that double while the rows are young are not re-laid at all."""

import mmap
import random

import numpy as np
import pytest

from tiers import hot
from tiers.hot import HotRing

BASE = 1_764_000_000_000


def _model_after(readings: dict[int, list[tuple[int, float]]], capacity: int) -> dict[int, list]:
    return {key: rows[-capacity:] for key, rows in readings.items()}


def _contents(ring: HotRing, keys: int) -> dict[int, list]:
    out = {}
    for key in range(keys):
        ts, value = ring.series(key)
        out[key] = list(zip(ts.tolist(), value.tolist(), strict=True))
    return out


@pytest.mark.parametrize("spare", [hot._SPARE_ROWS_FACTOR, 0], ids=["spare-rows", "no-spare-rows"])
def test_a_relay_keeps_the_newest_readings_of_every_row_in_order(monkeypatch, spare):
    monkeypatch.setattr(hot, "_SPARE_ROWS_FACTOR", spare)
    for seed in range(6):
        rng = random.Random(seed)
        ring = HotRing(window_ms=10**12, memory_budget=1 << 30, covered_from=BASE - 1)
        keys = rng.randint(1, 300)
        readings: dict[int, list] = {k: [] for k in range(keys)}
        for step in range(rng.randint(1, 40)):
            count = rng.randint(1, 400)
            key_ids = np.array([rng.randrange(keys) for _ in range(count)], dtype=np.int32)
            ts = BASE + step * 1000 + np.arange(count, dtype=np.int64)  # increasing: no merges
            value = np.array([rng.random() for _ in range(count)])
            keep, _ = ring.insert(key_ids, ts, value)
            assert keep.all()
            for k, t, v in zip(key_ids.tolist(), ts.tolist(), value.tolist(), strict=True):
                readings[k].append((t, v))
            readings = _model_after(readings, ring.capacity)  # what the ring can hold so far
        assert _contents(ring, keys) == readings, seed
        # Smaller (rows wrap and are cut), the same, and larger, with more rows each time.
        for capacity in (max(1, ring.capacity // 4), ring.capacity, ring.capacity * 2):
            capacity = min(capacity, ring._reserved)
            covered_before = [ring.covered_from(k) for k in range(keys)]
            ring._resize(capacity, len(ring._written) * 2)
            readings = _model_after(readings, capacity)
            assert _contents(ring, keys) == readings, (seed, capacity)
            for k in range(keys):  # readings cut off are no longer vouched for
                expected = max(covered_before[k], readings[k][0][0]) if readings[k] and \
                    len(readings[k]) == capacity else covered_before[k]
                assert ring.covered_from(k) >= covered_before[k]
                assert ring.covered_from(k) <= expected


def _count_relayed_rows(monkeypatch) -> list[int]:
    calls: list[int] = []
    relay_rows = HotRing._relay_rows

    def counted(self, first, stop, *args):
        calls.append(stop - first)
        return relay_rows(self, first, stop, *args)
    monkeypatch.setattr(HotRing, "_relay_rows", counted)
    return calls


def _fill_a_fab(sensors: int, step: int) -> HotRing:
    ring = HotRing(window_ms=60_000, memory_budget=1 << 30, covered_from=BASE - 1)
    for first in range(0, sensors, step):  # sensors appear a thousand at a time
        key_ids = np.arange(first, first + step, dtype=np.int32)
        ring.insert(key_ids, np.full(step, BASE, np.int64), np.ones(step))
    assert len(ring) == sensors
    assert all(ring.series(k)[0].tolist() == [BASE] for k in range(0, sensors, 997))
    return ring


def test_a_relay_works_in_blocks_not_row_by_row(monkeypatch):
    monkeypatch.setattr(hot, "_SPARE_ROWS_FACTOR", 0)  # as where no address space is lent
    calls = _count_relayed_rows(monkeypatch)
    sensors = 100_000
    _fill_a_fab(sensors, 1_000)
    # Each doubling of the rows re-laid every row so far, thousands of rows a call.
    assert sum(calls) >= sensors and max(calls) >= 1000
    assert len(calls) <= sum(calls) / 500, calls


def test_keys_that_double_into_spare_rows_are_not_re_laid(monkeypatch):
    """100,000 sensors appearing a thousand at a time: the rows are re-laid once, when the
    first reservation's 64 x 64 rows run out (a few thousand rows), not at every doubling."""
    calls = _count_relayed_rows(monkeypatch)
    ring = _fill_a_fab(100_000, 1_000)
    assert sum(calls) <= 64 * (hot._SPARE_ROWS_FACTOR + 1), calls
    # The budget still bounds what the rows in use can hold.
    assert ring.memory_bytes <= 1 << 30


def _backed_bytes(ring: HotRing) -> int:
    """The memory the rows in use back: each written row's slots (a reading's ts and value
    side by side), by whole pages (a page two rows share counted once)."""
    page, slot = mmap.PAGESIZE, hot.BYTES_PER_READING
    held = np.minimum(ring._written[:ring._keys], ring.capacity)
    rows = np.flatnonzero(held)
    start = rows * ring._reserved * slot
    first, last = start // page, (start + held[rows] * slot - 1) // page
    pages = int((last - first + 1).sum()) - int(np.count_nonzero(first[1:] == last[:-1]))
    return pages * page


def test_spare_rows_never_let_young_rows_outgrow_the_budget():
    """Keys appearing past what the budget holds at a page a row: the rows are re-laid to
    share pages, as without spare rows, and what they back stays within the budget."""
    budget = 16 << 20
    ring = HotRing(window_ms=60_000, memory_budget=budget, covered_from=BASE - 1)
    for first in range(0, 6_000, 250):
        key_ids = np.arange(first, first + 250, dtype=np.int32)
        ring.insert(key_ids, np.full(250, BASE, np.int64), np.ones(250))
        assert _backed_bytes(ring) <= budget, (first, ring._reserved, ring._slots.shape)
    assert ring.series(5_999)[0].tolist() == [BASE]
