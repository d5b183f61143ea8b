"""The hot ring's new rows get their first page backed by a thread of their own, ahead of
their first reading, and nothing they hold changes (tiers.prefault)."""

import ctypes
import mmap
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tiers import hot, prefault
from tiers.hot import HotRing

BASE = 1_764_000_000_000
populate = prefault.loaded()
pytestmark = pytest.mark.skipif(populate is None, reason="no madvise(MADV_POPULATE_WRITE) here")
_libc = ctypes.CDLL(None, use_errno=True)


def _resident(store: np.ndarray, row: int) -> bool:
    """Whether the page that holds the start of `row` is backed (mincore)."""
    page = mmap.PAGESIZE
    start = (store.ctypes.data + row * store.strides[0]) // page * page
    vector = (ctypes.c_ubyte * 1)()
    assert _libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(page), vector) == 0, ctypes.get_errno()
    return bool(vector[0] & 1)


def _contents(ring: HotRing, keys: int) -> list:
    return [tuple(a.tolist() for a in ring.series(key)) for key in range(keys)]


def test_rows_ahead_of_those_in_use_are_backed_and_those_beyond_are_not(monkeypatch):
    monkeypatch.setattr(hot, "_prefault", populate)
    ring = HotRing(window_ms=60_000, memory_budget=2 << 30, covered_from=BASE - 1)
    assert ring._reserved * hot.BYTES_PER_READING >= mmap.PAGESIZE  # a page a row: each row's first page its own
    keys = 1_000
    ring.insert(np.arange(keys, dtype=np.int32), np.full(keys, BASE, np.int64), np.ones(keys))
    assert ring._prefaulter is not None and ring._prefaulter.wait_idle()
    upto = prefault.ahead(keys)
    assert ring._prefaulter.failed == 0 and ring._slots.shape[0] > upto + 100
    for store in (ring._slots,):
        assert all(_resident(store, row) for row in range(keys, upto))  # ahead: backed
        assert not any(_resident(store, row) for row in range(upto + 1, upto + 100))  # beyond: not


def _with_and_without_thread(monkeypatch, batches: list, *, window_ms: int) -> list[HotRing]:
    """Two rings given the same inserts: the first with the prefaulting thread, the second without."""
    rings = []
    for loop in (populate, None):
        monkeypatch.setattr(hot, "_prefault", loop)
        ring = HotRing(window_ms=window_ms, memory_budget=1 << 30, covered_from=BASE - 1)
        for keys, ts, value in batches:
            ring.insert(keys, ts, value)
        rings.append(ring)
    return rings


def test_prefaulting_beside_the_writer_changes_no_reading(monkeypatch):
    """The same inserts, with a prefaulting thread and without: the same rows, reading for
    reading, while keys appear in bursts the thread works behind and ahead of."""
    rng = random.Random(2)
    batches = []
    for step in range(60):
        keys = np.array([rng.randrange(0, 400 * (step + 1)) for _ in range(500)], dtype=np.int32)
        batches.append((keys, np.full(500, BASE + step, np.int64), np.array([rng.random() for _ in range(500)])))
    with_thread, without = _with_and_without_thread(monkeypatch, batches, window_ms=60_000)
    assert with_thread._prefaulter is not None and without._prefaulter is None
    assert with_thread._prefaulter.wait_idle() and with_thread._prefaulter.failed == 0
    assert _contents(with_thread, 24_000) == _contents(without, 24_000)


def _backed_pages(store: np.ndarray, row: int, pages: int) -> list[bool]:
    """Whether each of the first `pages` pages of `row` is backed (mincore)."""
    page = mmap.PAGESIZE
    start = store.ctypes.data + row * store.strides[0]
    assert start % page == 0
    vector = (ctypes.c_ubyte * pages)()
    assert _libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(pages * page), vector) == 0, ctypes.get_errno()
    return [bool(v & 1) for v in vector]


@pytest.mark.parametrize("slot_bytes", [8, hot.BYTES_PER_READING])  # two stores of 8; the ring's one of 16
def test_rows_in_use_are_backed_ahead_of_their_writes_at_their_own_pace(slot_bytes):
    follow = prefault.loaded_follow()
    assert follow is not None
    per_page = mmap.PAGESIZE // slot_bytes
    capacity = 16 * per_page
    words = slot_bytes // 8
    stores = tuple(hot._reserve(3, capacity * words, np.int64) for _ in range(2 if words == 1 else 1))
    written = np.zeros(3, np.int64)
    follower = prefault.RowFollower(follow, mmap.PAGESIZE)
    assert follower.step(stores, written, 3, capacity, slot_bytes) == 0  # the first pass only notes where rows are
    written[:] = [per_page // 2, 3 * per_page, 0]  # row 0 slow, row 1 fast, row 2 idle
    assert follower.step(stores, written, 3, capacity, slot_bytes) == 0
    for store in stores:
        # row 0: half a page a pass, 4 passes ahead -> slot 2.5 pages: pages 0-2 backed
        assert _backed_pages(store, 0, 16) == [True] * 3 + [False] * 13
        # row 1: at page 3, 3 pages a pass -> up to slot 15 pages in: pages 3-14
        assert _backed_pages(store, 1, 16) == [False] * 3 + [True] * 12 + [False]
        assert not any(_backed_pages(store, 2, 16))  # nothing written: nothing backed
    written[1] = capacity + 5  # wrapped: every page was written, nothing more to back
    assert follower.step(stores, written, 3, capacity) == 0
    assert not _backed_pages(stores[0], 1, 16)[15]


def test_following_the_writer_changes_no_reading(monkeypatch):
    """As above, with the thread backing the rows in use ahead of their writes every millisecond."""
    monkeypatch.setattr(prefault, "FOLLOW_S", 0.001)
    rng = random.Random(3)
    batches = []
    for step in range(400):
        keys = np.array([rng.randrange(0, 300) for _ in range(500)], dtype=np.int32)
        batches.append((keys, BASE + 500 * step + np.arange(500, dtype=np.int64), np.array([rng.random() for _ in range(500)])))
    with_thread, without = _with_and_without_thread(monkeypatch, batches, window_ms=600_000)
    assert with_thread._prefaulter is not None and with_thread._prefaulter._follower is not None
    assert with_thread._prefaulter.failed == 0
    assert _contents(with_thread, 300) == _contents(without, 300)


def test_the_thread_ends_with_its_ring(monkeypatch):
    monkeypatch.setattr(hot, "_prefault", populate)
    monkeypatch.setattr(prefault, "_IDLE_CHECK_S", 0.05)
    ring = HotRing(window_ms=60_000, memory_budget=1 << 30, covered_from=BASE - 1)
    ring.insert(np.arange(10, dtype=np.int32), np.full(10, BASE, np.int64), np.ones(10))
    thread = ring._prefaulter._thread
    assert thread.is_alive()
    del ring
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert threading.current_thread().is_alive()


def test_the_follow_loop_is_compiled_before_ingestion_for_what_the_ring_passes(monkeypatch):
    """`loaded` compiles the follower's loop for the types a ring's state has: its first step
    while ingesting compiles nothing more (a compile there held the interpreter lock ~0.35 s)."""
    # In a process of its own: here the tests above have run the loop already.
    fresh = subprocess.run([sys.executable, "-c", "from tiers import prefault; prefault.loaded(); "
                            "print(len(prefault._follow.signatures))"],
                           capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    assert fresh.stdout.strip() == "1"
    follow = prefault.loaded_follow()
    assert follow is not None and len(follow.signatures) == 1
    monkeypatch.setattr(hot, "_prefault", populate)
    ring = HotRing(window_ms=60_000, memory_budget=1 << 30, covered_from=BASE - 1)
    ring.insert(np.arange(10, dtype=np.int32), np.full(10, BASE, np.int64), np.ones(10))
    stores, written, rows, capacity, slot_bytes = ring._follow_state()
    follower = prefault.RowFollower(follow, mmap.PAGESIZE)
    for _ in range(2):
        assert follower.step(stores, written, rows, capacity, slot_bytes) == 0
    assert len(follow.signatures) == 1
