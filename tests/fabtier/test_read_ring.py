"""A lock-free read of the hot ring is tried again while its row is rewritten, then once under
the ingest lock (fabtier.reads.Reads._read_ring, behind /series and /bands)."""

import threading
from types import SimpleNamespace

import pytest

from fabtier.reads import _SERIES_ATTEMPTS, Reads


class Busy:
    """A row rewritten for the first `busy` reads; `locked` says whether a read held the lock."""

    def __init__(self, busy: int, lock: threading.Lock) -> None:
        self.busy, self.lock, self.reads, self.locked = busy, lock, 0, []

    def __call__(self):
        self.reads += 1
        self.locked.append(self.lock.locked())
        return None if self.reads <= self.busy else "answer"


def test_a_row_busy_for_a_while_is_read_again_without_the_lock():
    reads = SimpleNamespace(_lock=threading.Lock())
    row = Busy(3, reads._lock)
    assert Reads._read_ring(reads, row) == ("answer", None)
    assert row.reads == 4 and not any(row.locked)


def test_a_row_that_stays_busy_is_read_under_the_lock():
    reads = SimpleNamespace(_lock=threading.Lock())
    row = Busy(_SERIES_ATTEMPTS, reads._lock)
    answer, waited = Reads._read_ring(reads, row)
    assert answer == "answer" and waited is not None and waited >= 0
    assert row.reads == _SERIES_ATTEMPTS + 1 and row.locked[-1] and not any(row.locked[:-1])
    with pytest.raises(RuntimeError):
        Reads._read_ring(reads, Busy(_SERIES_ATTEMPTS + 1, reads._lock))
