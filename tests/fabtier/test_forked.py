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


class _Finalised:
    """An object in a reference cycle that says, in a file, when it is finalised."""

    def __init__(self, path) -> None:
        self.path, self.me = path, self

    def __del__(self) -> None:
        with open(self.path, "a") as out:
            out.write(f"{os.getpid()}\n")


def test_the_child_never_collects_the_parents_garbage_and_the_parent_keeps_its_frozen_objects(tmp_path):
    """A cycle the parent dropped just before the fork is garbage the child also holds: the
    child must not finalise it (its destructor would act on the parent's resources: a DuckDB
    connection crashed the child). And objects the parent froze (`freeze_startup_objects`) stay
    frozen after a fork: the parent does not thaw them around it."""
    import gc
    marks = tmp_path / "finalised"
    frozen = gc.get_freeze_count()
    gc.freeze()  # as an instance does at start-up
    try:
        held = gc.get_freeze_count()
        assert held > frozen
        collecting = gc.isenabled()
        gc.disable()  # the cycle stays uncollected in the parent until after the fork
        _Finalised(marks)
        gc.enable()
        pid = forked.call_in_fork(lambda: (gc.collect(), os.getpid())[1], timeout=60)
        assert not marks.exists() or str(pid) not in marks.read_text().split()  # not in the child
        # Still frozen (a thaw would leave none); a few frozen objects may have been freed since.
        assert gc.get_freeze_count() > held * 9 // 10 and gc.isenabled() == collecting
        gc.collect()  # in the parent, the cycle is garbage as any other
        assert str(os.getpid()) in marks.read_text().split()
    finally:
        gc.unfreeze()
