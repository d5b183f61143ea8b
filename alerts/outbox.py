"""The alert outbox: delivers durable alert events to every sink, in order, retrying failures.

The outbox keeps no copy of the events: they are durable in the write-ahead log (and then
the lake) before they are handed over. What it keeps per sink is a cursor, the `seq` of
the last event that sink took, written atomically to `{directory}/{sink}.cursor` by a
background thread soon after each delivery (the fsync never delays the next alert). On
start every event after a sink's cursor is queued again, so a sink that fails, or a crash
before delivery, loses nothing; a crash between a delivery and its cursor write repeats
those events (at least once; payloads carry an id).

Each sink has its own thread and queue: a slow or dead sink delays only itself, never
ingest (which only appends to a deque) and never another sink. Failures back off from
`retry_min` doubling up to `retry_max`; events wait in order, so a `cleared` is never
delivered before its `raised`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from alerts.sinks import SinkError
from core.protocols import AlertSink
from core.records import AlertEvent

log = logging.getLogger("fabtier.alerts")
MAX_BATCH = 500
_LOG_EVERY_S = 60.0  # a dead sink is reported at its first failure, then once a minute


class Cursor:
    """The seq of the last event a sink took; survives crashes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except FileNotFoundError:
            return None
        except ValueError:
            # A torn write cannot happen (we replace atomically); a hand-edited file can.
            log.error("alert cursor %s is unreadable; redelivering from the start", self.path)
            return 0

    def write(self, seq: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            handle.write(f"{seq}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class SinkWorker:
    """One sink's queue and delivery thread."""

    def __init__(self, sink: AlertSink, cursor: Cursor, *, retry_min: float, retry_max: float) -> None:
        self.sink = sink
        self.cursor = cursor
        self.retry_min = retry_min
        self.retry_max = max(retry_min, retry_max)
        self._queue: deque[AlertEvent] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._draining_until: float | None = None
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._taken = 0  # seq of the last event the sink took
        self._taken_changed = threading.Event()
        self.position = 0  # seq of the last event taken that the cursor file holds
        self.latency_ms: deque[float] = deque(maxlen=1000)  # decision -> delivered, recent events
        self.delivered = 0
        self.failures = 0
        self.last_error = ""
        self._last_logged = 0.0

    def restore(self, events: list[AlertEvent], last_seq: int) -> None:
        found = self.cursor.read()
        if found is None:
            # A sink configured for the first time starts at the end of the alert log.
            found = last_seq
            self.cursor.write(found)
        self.position = self._taken = found
        self._queue.extend(e for e in events if e.seq > found)

    def push(self, events: list[AlertEvent]) -> None:
        with self._cond:
            self._queue.extend(events)
            self._cond.notify()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.sink.name}", daemon=True)
        self._thread.start()
        self._writer = threading.Thread(target=self._write_cursor, name=f"alerts-{self.sink.name}-cursor",
                                        daemon=True)
        self._writer.start()

    def drain(self, grace: float) -> None:
        """Deliver what is queued for up to `grace` seconds more, then stop; the rest waits
        in the log for the next start."""
        with self._cond:
            self._draining_until = time.monotonic() + grace
            self._cond.notify()

    def join(self, grace: float) -> None:
        if self._thread is not None:
            self._thread.join(grace + self.sink_timeout() + 1)
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(self.sink_timeout() + 1)
        self._taken_changed.set()
        if self._writer is not None:
            self._writer.join()
        self.sink.close()

    def _write_cursor(self) -> None:
        while True:
            self._taken_changed.wait()
            self._taken_changed.clear()
            taken = self._taken
            if taken != self.position:
                try:
                    self.cursor.write(taken)
                    self.position = taken
                except OSError as exc:
                    log.error("cannot record alert delivery to %s (%s); events may repeat", self.sink.name, exc)
            with self._cond:
                if self._stop:
                    if self._taken == self.position:
                        return
                    self._taken_changed.set()

    def sink_timeout(self) -> float:
        return float(getattr(self.sink, "timeout", 5.0))

    def _done(self) -> bool:
        if self._stop:
            return True
        return self._draining_until is not None and (not self._queue or time.monotonic() >= self._draining_until)

    def _run(self) -> None:
        backoff = self.retry_min
        while True:
            with self._cond:
                while not self._queue and not self._done():
                    self._cond.wait()
                if self._done():
                    return
                batch = [self._queue[i] for i in range(min(MAX_BATCH, len(self._queue)))]
            failure: str | None = None
            try:
                sent = self.sink.send(batch)
            except SinkError as exc:
                sent, failure = exc.delivered, exc.reason
            except Exception as exc:  # a bug in a sink must not end its thread
                log.exception("alert sink %s failed unexpectedly", self.sink.name)
                sent, failure = 0, f"{type(exc).__name__}: {exc}"
            if sent:
                now_ms = time.time_ns() / 1e6
                self.latency_ms.extend(now_ms - e.raised_at for e in batch[:sent])
                with self._cond:
                    for _ in range(sent):
                        self._queue.popleft()
                self.delivered += sent
                self._taken = batch[sent - 1].seq
                self._taken_changed.set()
            if failure is None:
                backoff = self.retry_min
                continue
            self.failures += 1
            self.last_error = failure
            now = time.monotonic()
            if now - self._last_logged >= _LOG_EVERY_S or self.failures == 1:
                self._last_logged = now
                log.warning("alert sink %s failed (%s); %d alert(s) wait, retrying", self.sink.name,
                            failure, len(self._queue))
            with self._cond:
                self._cond.wait_for(self._done, timeout=backoff)
            backoff = min(self.retry_max, backoff * 2)


class Outbox:
    def __init__(self, directory: Path, sinks: list[AlertSink], *, retry_min: float = 0.05,
                 retry_max: float = 30.0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.workers = [SinkWorker(s, Cursor(directory / f"{s.name}.cursor"), retry_min=retry_min,
                                   retry_max=retry_max) for s in sinks]

    def restore(self, events: list[AlertEvent], last_seq: int) -> None:
        """Queue, per sink, this writer's durable events after its cursor (`events` sorted by seq)."""
        for worker in self.workers:
            worker.restore(events, last_seq)

    def push(self, events: list[AlertEvent]) -> None:
        for worker in self.workers:
            worker.push(events)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self, grace: float = 2.0) -> None:
        for worker in self.workers:
            worker.drain(grace)
        for worker in self.workers:
            worker.join(grace)

    def metrics(self) -> dict:
        return {w.sink.name: {"delivered": w.delivered, "backlog": w.backlog, "failures": w.failures,
                              "position": w.position, "last_error": w.last_error,
                              "decided_to_delivered_ms": latency_summary(list(w.latency_ms))}
                for w in self.workers}


def latency_summary(values: list[float]) -> dict:
    """p50, p99 and max of recent latencies (ms), for /metrics."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 2)}
