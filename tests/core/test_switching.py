"""The switch interval is short while a request that hands the interpreter lock back and forth
runs, and the process's own again once the last such request is done."""

import sys
import threading

import pytest

from core.switching import QUICK_SWITCH_INTERVAL, quick_handoffs


@pytest.fixture
def ingest_interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield 0.0005
    sys.setswitchinterval(before)


def test_short_inside_and_restored_after_even_on_an_error(ingest_interval):
    with quick_handoffs():
        assert sys.getswitchinterval() == pytest.approx(QUICK_SWITCH_INTERVAL, abs=2e-6)
    assert sys.getswitchinterval() == pytest.approx(ingest_interval, abs=2e-6)
    with pytest.raises(RuntimeError), quick_handoffs():
        raise RuntimeError("a statement failed")
    assert sys.getswitchinterval() == pytest.approx(ingest_interval, abs=2e-6)


def test_overlapping_requests_keep_it_short_until_the_last_one_leaves(ingest_interval):
    first_in, second_in, first_may_leave, first_left = (threading.Event() for _ in range(4))
    seen = {}

    def first():
        with quick_handoffs():
            first_in.set()
            first_may_leave.wait(10)
        first_left.set()

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with quick_handoffs():
        second_in.set()
        first_may_leave.set()
        first_left.wait(10)
        seen["after the first left"] = sys.getswitchinterval()
    thread.join()
    assert seen["after the first left"] == pytest.approx(QUICK_SWITCH_INTERVAL, abs=2e-6)
    assert sys.getswitchinterval() == pytest.approx(ingest_interval, abs=2e-6)


def test_an_interval_already_shorter_is_left_alone():
    before = sys.getswitchinterval()
    sys.setswitchinterval(QUICK_SWITCH_INTERVAL / 2)
    try:
        with quick_handoffs():
            assert sys.getswitchinterval() == pytest.approx(QUICK_SWITCH_INTERVAL / 2, abs=2e-6)
    finally:
        sys.setswitchinterval(before)
