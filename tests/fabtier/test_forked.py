"""Work done in a forked child comes back whole, or as a clear failure."""

import os
import threading
import time

import numpy as np
import pytest

from fabtier import forked

pytestmark = pytest.mark.skipif(not forked.available(), reason="needs os.fork")


def test_the_result_comes_back_and_the_child_sees_the_parents_memory():
    data = np.arange(1_000_000, dtype=np.int64)  # not passed: the child sees it as it is
    busy = threading.Thread(target=lambda: [sum(range(1000)) for _ in range(2000)])
    busy.start()  # another thread running while forking
    result = forked.call_in_fork(lambda: (os.getpid(), int(data.sum()), b"x" * 3_000_000), timeout=60)
    busy.join()
    pid, total, big = result
    assert pid != os.getpid() and total == int(data.sum()) and len(big) == 3_000_000


def test_an_exception_in_the_child_is_reported_with_its_traceback():
    def fails():
        raise ValueError("store refused")
    with pytest.raises(forked.ChildFailed, match="ValueError: store refused(.|\n)*in fails"):
        forked.call_in_fork(fails, timeout=60)


def test_a_child_that_dies_without_an_answer_is_lost():
    with pytest.raises(forked.ChildLost, match="without an answer"):
        forked.call_in_fork(lambda: os._exit(3), timeout=60)


def test_a_child_that_hangs_is_killed_at_the_timeout():
    began = time.monotonic()
    with pytest.raises(forked.ChildLost, match="within 1 s"):
        forked.call_in_fork(lambda: time.sleep(60), timeout=1)
    assert time.monotonic() - began < 30  # killed, not waited for


def test_a_child_closing_the_data_dir_lock_leaves_it_held_by_the_parent(tmp_path):
    from fabtier.datadir import DataDirBusy, DataDirLock, is_locked

    lock = DataDirLock(tmp_path, exclusive=True)
    try:
        forked.call_in_fork(lambda: lock.close_inherited(), timeout=60)
        assert is_locked(tmp_path)
        with pytest.raises(DataDirBusy):
            DataDirLock(tmp_path, exclusive=True)
    finally:
        lock.release()
    assert not is_locked(tmp_path)
