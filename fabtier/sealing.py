"""Sealing: closed log segments into the Parquet lake (copy, verify, audit, then delete).

The seal rotates the log, then writes each closed segment as Parquet, preferably in a forked
child (`[cold] seal_in_child`, `fabtier.forked`) so that sorting and encoding millions of
rows does not take the interpreter lock from ingestion; the parent writes the audit record
and only then deletes the segment. File names come from the segment number, so sealing again
after a crash replaces instead of adding.

A segment the store refuses stays in the log (and its rows in memory) for the next seal; the
failure is logged at ERROR with the store's reason and the known fix, counted
(`seal_failures`), and makes `/health` say degraded until a seal leaves no segment behind.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager

from core.errors import FabtierError
from core.protocols import Clock
from core.settings import Settings
from fabtier import forked
from fabtier.allocator import release_freed_memory, tune_allocator
from fabtier.datadir import DataDirLock
from fabtier.runstate import Metrics, step_failed, step_worked
from ingest.wal import LogFull, WriteAheadLog, read_segment
from lifecycle.audit import AuditLog
from tiers.cold import ColdLake, Move, SealReport
from tiers.unsealed import UnsealedData, tables_from_records

log = logging.getLogger("fabtier.pipeline")

SEAL_CHILD_TIMEOUT = 1800.0  # s; a child that hangs this long is killed and the seal redone here
# A child that stalls (stopped, deadlocked, a connection that carries nothing) is found much
# sooner, by its progress: `fabtier.forked.STALL_LIMIT` (60 s) without CPU time or bytes read or
# written. At full ingest rate `[ingest] max_unsealed` fills in minutes; 30 minutes of a hung
# child would stop ingestion by backpressure long before.


SEAL_STEP = "seal"  # its name in /health


class SealError(FabtierError):
    """Writing a segment into the lake failed (the segment stays and is retried). Raised for a
    forked child's failure: the first line is the child's error, then its traceback."""


class Sealer:
    """Moves this pipeline's closed log segments into the lake; one seal at a time.

    `lock` is the ingest lock (the unsealed buffer and the log's segment list); `segment_guard`
    waits for the micro-batch being written, so that a rotated segment is closed for good."""

    def __init__(self, *, settings: Settings, clock: Clock, metrics: Metrics, wal: WriteAheadLog,
                 unsealed: UnsealedData, lake: ColdLake, audit: AuditLog, lock: AbstractContextManager,
                 segment_guard: AbstractContextManager, dir_lock: DataDirLock | None) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.wal = wal
        self.unsealed = unsealed
        self.lake = lake
        self.audit = audit
        self._lock = lock
        self._segment_guard = segment_guard
        self._dir_lock = dir_lock
        self.seal_lock = threading.Lock()  # held by every job that writes or deletes this writer's files
        tune_allocator()  # the seals free what ingestion allocated: see release_freed_memory

    def seal(self) -> SealReport:
        """Move every closed log segment into the lake. Idempotent; never runs twice at once."""
        with self.seal_lock:
            with self._segment_guard, self._lock:
                if not self.wal.active_empty:  # an idle log has nothing to seal: no empty segments
                    try:
                        self.wal.rotate()
                    except LogFull:
                        # The log's disk is full: the active segment stays as it is, and the
                        # closed ones are still sealed (deleting them frees room on that disk).
                        log.warning("the log's disk is full: the active segment is sealed once there is room")
                due = [s for s in self.wal.segments() if s != self.wal.active]
            rows = files = done = failed = 0
            for segment in due:
                with self._lock:
                    in_memory = segment in self.unsealed.segments()
                try:
                    moves = self._write_segment(segment, in_memory)
                except Exception as exc:
                    # The segment stays in the log and in memory; the next run retries it.
                    failed += 1
                    self.metrics.seal_failures += 1
                    step_failed(self.metrics, SEAL_STEP, exc, settings=self.settings, at_ms=self.clock.now_ms(),
                                what=f"log segment {segment}",
                                then="the segment stays in the log and the next seal tries it again")
                    if isinstance(exc, SealError):
                        log.debug("sealing log segment %d in a child process: %s", segment, exc)
                    continue
                self.audit.record("seal", moves, self.clock.now_ms())
                with self._lock:
                    self.wal.delete(segment)
                    self.unsealed.drop(segment)
                done += 1
                rows += sum(m.rows for m in moves if m.what == "raw")
                files += len(moves)
            if not failed:  # nothing is left behind (segments of earlier failures included)
                step_worked(self.metrics, SEAL_STEP, at_ms=self.clock.now_ms())
            if done:
                release_freed_memory()
            self.metrics.segments_sealed += done
            self.metrics.rows_sealed += rows
            return SealReport(segments=done, rows=rows, files=files)

    def _write_segment(self, segment: int, in_memory: bool) -> list[Move]:
        """One closed segment into the lake (copy and verify); the moves made."""
        source = self.wal.path(segment).as_uri()
        if in_memory and self.settings.cold.seal_in_child and forked.available():
            def in_child() -> list[Move]:
                if self._dir_lock is not None:
                    self._dir_lock.close_inherited()
                self.lake.after_fork()
                return self.lake.write_segment(segment, self.unsealed.sealable([segment]), source=source)
            try:
                # Below ingestion in the CPU's queue (idle priority: only on a core nothing
                # else wants) while the seal keeps up, so that on a busy machine it is the seal
                # that waits, not the alerts; at ingestion's priority once unsealed data passes
                # half of [ingest] max_unsealed, so that other processes on the machine cannot
                # starve it into backpressure (they did: a 500,000 readings/s soak beside one
                # busy process reached backpressure in 110 s with the seal idle throughout).
                limit = self.settings.ingest.max_unsealed
                return forked.call_in_fork(in_child, timeout=SEAL_CHILD_TIMEOUT,
                                           idle_unless=lambda: self.unsealed.pressure(limit) > 0)
            except forked.ChildFailed as exc:
                raise SealError(str(exc)) from None
            except forked.ChildStalled as exc:
                log.error("sealing segment %d in a child process: the child stalled and was killed: %s; "
                          "sealing it in this process", segment, exc)
            except forked.ChildLost as exc:
                log.warning("sealing segment %d in a child process: %s; sealing it in this process", segment, exc)
        # Outside the lock: the segment is closed (rotation waited for the last micro-batch
        # that wrote to it), so nothing changes its rows any more, and sorting millions of
        # them must not stop ingestion or readers meanwhile.
        tables = self.unsealed.sealable([segment]) if in_memory else None
        if tables is None:
            tables = tables_from_records(read_segment(self.wal.path(segment)))
        return self.lake.write_segment(segment, tables, source=source)
