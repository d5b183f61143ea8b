"""A seal child that stalls is found by its progress, long before the seal's timeout (issue 14).

A child stopped with SIGSTOP (as a debugger, an operator or a frozen cgroup leaves it) never
answers and never dies; before, the parent waited `SEAL_CHILD_TIMEOUT` (30 minutes) while
unsealed rows reached `[ingest] max_unsealed` and backpressure stopped ingestion. Now the
parent sees that the child's CPU time and bytes read and written stand still, kills it after
`forked.STALL_LIMIT` and seals the segment in this process."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from fabtier import forked, sealing
from tests.e2e.test_failures import DyingChildStore, _lake_state, _seal_one_segment

pytestmark = pytest.mark.skipif(not forked.available() or not os.path.exists("/proc/self/stat"),
                                reason="needs os.fork and /proc (Linux)")

STALL = 0.5  # s; the tests' stall limit (60 s in production)


def test_a_stopped_child_is_killed_as_stalled_before_its_timeout():
    def stops() -> str:
        os.kill(os.getpid(), signal.SIGSTOP)
        return "continued"  # never: SIGKILL ends a stopped process
    with pytest.raises(forked.ChildStalled, match="no progress"):
        forked.call_in_fork(stops, timeout=600, stall=STALL)


def test_a_blocked_child_is_killed_as_stalled():
    read_fd, write_fd = os.pipe()  # nobody writes: the child waits for ever, using nothing

    def blocks() -> bytes:
        return os.read(read_fd, 1)
    try:
        with pytest.raises(forked.ChildStalled):
            forked.call_in_fork(blocks, timeout=600, stall=STALL)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_child_that_works_longer_than_the_stall_limit_is_not_killed():
    def works() -> int:
        end, n = time.monotonic() + 4 * STALL, 0
        while time.monotonic() < end:  # CPU time grows all along
            n += sum(range(1000))
        return n
    assert forked.call_in_fork(works, timeout=600, stall=STALL) > 0


def test_the_default_stall_limit_is_read_at_each_call(monkeypatch):
    monkeypatch.setattr(forked, "STALL_LIMIT", STALL)
    with pytest.raises(forked.ChildStalled):
        forked.call_in_fork(lambda: os.kill(os.getpid(), signal.SIGSTOP), timeout=600)


def test_a_seal_child_stopped_mid_seal_is_killed_and_the_segment_sealed_here_once(tmp_path, monkeypatch, caplog):
    # Not reached: should the stall go unseen, the test fails at this timeout instead of
    # waiting 30 minutes; the log says which of the two ended the child.
    monkeypatch.setattr(sealing, "SEAL_CHILD_TIMEOUT", 300.0)
    monkeypatch.setattr(forked, "STALL_LIMIT", STALL)
    clean, expected, fates = _seal_one_segment(tmp_path / "clean", lambda inner: inner)
    assert fates == ["answered"]
    readings, clean_names, _ = _lake_state(clean)
    assert readings == expected and len(clean_names) >= 2
    clean.close_offline()
    for at in range(len(clean_names)):  # stopped before each of the child's writes
        run = tmp_path / f"stopped-{at}"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fabtier.pipeline"):
            pipeline, expected, fates = _seal_one_segment(
                run, lambda inner, at=at, run=run: DyingChildStore(inner, at=at, how="stops", ledger=run / "ledger"))
        assert fates == ["lost"], at
        stalled = [r for r in caplog.records if "the child stalled and was killed" in r.getMessage()]
        assert [r.levelno for r in stalled] == [logging.ERROR], caplog.text
        assert "no progress" in stalled[0].getMessage() and "sealing it in this process" in stalled[0].getMessage()
        # The child's writes until it was stopped, then this process's whole seal.
        assert (run / "ledger").stat().st_size == at + len(clean_names)
        # Sealed once, here: the log segment gone, the child's partial files replaced, every
        # reading in the lake once, every file in the audit trail.
        assert pipeline.metrics.seal_failures == 0 and pipeline.metrics.segments_sealed == 1
        assert pipeline.wal.segments() == [pipeline.wal.active]
        readings, names, audited = _lake_state(pipeline)
        assert readings == expected and names == clean_names, (at, names)
        assert len(audited) == len(clean_names), audited
        pipeline.close_offline()
