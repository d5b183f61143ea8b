"""Optional time-series sinks fed after the log commit, that never block ingest.

The ingest path hands every durable batch to `SinkQueue.offer`, which never waits: the
queue is bounded by a number of readings, and when it is full the batch skips the sink and
is counted (`dropped_readings`, with the time range of what was dropped). The lake is the
system of record; a sink is a copy for dashboards, and what it missed can be sent again
from the lake. A worker thread drains the queue into a `Destination` (Timestream,
InfluxDB), which retries throttling with exponential backoff and reports rejected records.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Protocol

from ingest.codec import ReadingBatch

log = logging.getLogger("fabtier.sinks")


def backoff_seconds(attempt: int, *, base: float = 0.1, cap: float = 10.0, jitter: float = 0.5) -> float:
    """Exponential backoff with full jitter on its upper half: attempt 0 waits about `base`."""
    delay = min(cap, base * (2 ** attempt))
    return delay * (1 - jitter * random.random())


@dataclass
class SinkStats:
    queued_readings: int = 0
    sent_records: int = 0
    rejected_records: int = 0
    failed_records: int = 0
    retries: int = 0
    dropped_readings: int = 0
    dropped_from_ms: int | None = None
    dropped_to_ms: int | None = None
    last_error: str = ""
    # The most recent rejections, each {"machine", "time", "reason"}.
    rejections: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100))

    def snapshot(self) -> dict:
        data = asdict(self)
        data["rejections"] = list(self.rejections)
        return data


class Destination(Protocol):
    name: str

    def prepare(self) -> None: ...
    def write(self, batches: list[ReadingBatch], stats: SinkStats) -> None: ...


class SinkQueue:
    def __init__(self, destination: Destination, *, max_readings: int) -> None:
        self.destination = destination
        self.max_readings = max_readings
        self.stats = SinkStats()
        self._queue: collections.deque[ReadingBatch] = collections.deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._work, name=f"sink-{destination.name}", daemon=True)

    def start(self) -> SinkQueue:
        self._thread.start()
        return self

    def offer(self, batch: ReadingBatch) -> bool:
        """Queue a durable batch for the sink; never blocks. False: it was dropped (queue full)."""
        size = len(batch)
        with self._lock:
            if self._queued + size > self.max_readings:
                stats = self.stats
                stats.dropped_readings += size
                low, high = int(batch.ts.min()), int(batch.ts.max())
                stats.dropped_from_ms = low if stats.dropped_from_ms is None else min(stats.dropped_from_ms, low)
                stats.dropped_to_ms = high if stats.dropped_to_ms is None else max(stats.dropped_to_ms, high)
                return False
            self._queue.append(batch)
            self._queued += size
            self.stats.queued_readings = self._queued
            self._idle.clear()
        self._wake.set()
        return True

    def _take(self, limit: int = 50_000) -> list[ReadingBatch]:
        taken, count = [], 0
        with self._lock:
            while self._queue and count < limit:
                batch = self._queue.popleft()
                taken.append(batch)
                count += len(batch)
            self._queued -= count
            self.stats.queued_readings = self._queued
        return taken

    def _work(self) -> None:
        try:
            self.destination.prepare()
        except Exception as exc:  # the sink stays off; ingest goes on
            log.exception("the %s sink could not be prepared", self.destination.name)
            self.stats.last_error = f"prepare: {type(exc).__name__}: {exc}"
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            while True:
                batches = self._take()
                if not batches:
                    break
                try:
                    self.destination.write(batches, self.stats)
                except Exception as exc:
                    log.exception("the %s sink failed a write", self.destination.name)
                    self.stats.failed_records += sum(len(b) for b in batches)
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if not self._queue:
                    self._idle.set()
            if self._stop.is_set():
                return

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued was handed to the destination; True if it was."""
        self._wake.set()
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
