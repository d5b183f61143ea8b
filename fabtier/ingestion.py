"""Ingesting and acknowledging: messages in, decoded, checked, logged, made durable, acknowledged.

Order of a reading's life here: decode -> (under the ingest lock) duplicate check in the hot
ring -> alert rules -> append to the write-ahead log -> visible in SQL; then the committer
thread fsyncs the log and acknowledges the messages that fsync covered to the broker. A
failure to make the log durable stops ingestion for good (fail-stop): acknowledging anything
after such a failure could lose data, and a restart recovers from the log. A full disk is not
such a failure (ingest.wal.LogFull): acknowledgements wait, `/health` says degraded, and the
committer tries again until there is room.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

from alerts.service import Alerting
from core.errors import DurabilityError
from core.protocols import Clock
from core.records import AlertEvent
from core.settings import Settings
from fabtier.runstate import Metrics, Status, step_worked
from ingest.assemble import Assembled, assemble, payload_text
from ingest.codec import Limits, ReadingBatch, SingleReading, batches_by_machine
from ingest.wal import LogFull, WriteAheadLog
from ingest.walformat import (
    QuarantineRecord,
    encode_alerts,
    encode_context,
    encode_keyed_readings,
    encode_quarantine,
    encode_readings,
)
from tiers.hot import HotRing
from tiers.keys import SensorKeys
from tiers.sinks import SinkQueue
from tiers.unsealed import UnsealedData

log = logging.getLogger("fabtier.pipeline")

LOG_STEP = "write-ahead log"  # its name in /health while its disk is full

# Messages decoded and stored together at most. Small enough that the log is committed
# (and messages acknowledged, alerts delivered) every few milliseconds under full load.
MICRO_BATCH = 128

Message = tuple[str, bytes, int, int]  # topic, payload, qos, token for the acknowledgement

# Payload bytes the inbox holds at most (besides `[broker] receive_maximum` messages): a
# thousand messages of up to `[ingest] max_payload` (1 MiB) would otherwise be a GiB that no
# budget counts. Past it paho's thread stops reading the socket, as when the count is full.
INBOX_BYTES = 64 << 20


# The log's active segment is closed once it holds this many readings, whatever `seal_every`
# says: a seal (in its forked child) needs ~160 bytes a reading of the segment it seals, so
# this bounds the child at ~330 MiB when the sealer falls behind and segments would otherwise
# grow to `[ingest] max_unsealed` (24 M readings at 512 MiB: ~3.7 GiB in the child).
SEGMENT_READINGS = 2_000_000


class Ingestor:
    """The inbox, the ingest thread and the committer thread of one pipeline.

    `lock` is the ingest lock (ring, unsealed buffer, key table, alert state); `segment_guard`
    keeps the log from rotating inside a micro-batch. `acknowledge` sends PUBACKs for tokens;
    `request_seal` asks for a seal now (backpressure)."""

    def __init__(self, *, settings: Settings, clock: Clock, status: Status, metrics: Metrics,
                 keys: SensorKeys, ring: HotRing, unsealed: UnsealedData, alerting: Alerting,
                 wal: WriteAheadLog, lock: AbstractContextManager, segment_guard: AbstractContextManager,
                 acknowledge: Callable[[list[int]], None], request_seal: Callable[[], None]) -> None:
        self.settings = settings
        self.clock = clock
        self.status = status
        self.metrics = metrics
        self.keys = keys
        self.ring = ring
        self.unsealed = unsealed
        self.alerting = alerting
        self.wal = wal
        self._lock = lock
        self._segment_guard = segment_guard
        self._acknowledge = acknowledge
        self._request_seal = request_seal
        self.limits = Limits(
            max_future_ms=int(settings.ingest.max_future * 1000),
            max_late_ms=int(settings.ingest.max_late * 1000),
            max_payload=settings.ingest.max_payload,
        )
        self._context_prefix = settings.broker.ctx_root + "/"
        self._stop = threading.Event()
        self._inbox: collections.deque[Message] = collections.deque()
        # Payload bytes put into and taken out of the inbox, each counted by one thread only
        # (paho's, the ingest thread), so neither needs a lock: held = in - out.
        self._inbox_in = self._inbox_out = 0
        self._wake = threading.Event()
        self._room = threading.Event()  # the inbox has room again
        self._ingester: threading.Thread | None = None
        self._committer: threading.Thread | None = None
        self.closing = False
        # Optional time-series sinks (tiers/sinks.py): batches wait here until their commit.
        self.sinks: list[SinkQueue] = []
        self._sink_pending: collections.deque[ReadingBatch] = collections.deque()
        self._sink_batches: list[ReadingBatch] = []  # this micro-batch's, until its log append
        self._withheld: list[int] = []  # durable, acknowledgement held back (backpressure)
        self._commit_guard = threading.Lock()  # the committer, and stop(), commit
        self._commit_wanted = threading.Event()
        self._last_commit = 0.0
        self._log_full = False  # the last commit found the log's disk full
        self._alerts_uncommitted: list[AlertEvent] = []  # taken for a commit that found no room
        self.segment_readings = SEGMENT_READINGS

    # ---- threads ---------------------------------------------------------------------
    def start(self, sinks: list[SinkQueue]) -> None:
        self.sinks = sinks
        self._committer = threading.Thread(target=self._commit_loop, name="wal-commit", daemon=True)
        self._committer.start()
        self._ingester = threading.Thread(target=self._ingest_loop, name="ingest", daemon=True)
        self._ingester.start()

    def close(self) -> None:
        """Take nothing more; messages arriving from now on stay unacknowledged, so the broker
        keeps them in our persistent session and delivers them again on the next start."""
        self.closing = True
        self._stop.set()
        self._wake.set()

    def join(self) -> None:
        """Wait for the ingest thread (it takes what is queued before it ends) and the committer."""
        if self._ingester is not None:
            self._ingester.join()
        if self._committer is not None:
            self._committer.join()

    @property
    def inbox_length(self) -> int:
        return len(self._inbox)

    @property
    def inbox_bytes(self) -> int:
        return self._inbox_in - self._inbox_out

    @property
    def acks_withheld(self) -> int:
        return len(self._withheld)

    # ---- ingest ------------------------------------------------------------------------
    def handle_message(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        """Called by the subscriber (paho's network thread) for every message; never raises.

        It only queues the message: the ingest thread takes the queue in micro-batches, so
        that many small messages share one duplicate check, one log append and one lock.
        The queue is bounded by the broker: it delivers at most `receive_maximum` messages
        that we have not acknowledged yet.
        """
        if self.closing:
            return  # left unacknowledged: the broker delivers it again on the next start
        # A broker that ignores our receive maximum is held off by TCP instead: this thread
        # stops reading the socket while the queue is full.
        while ((len(self._inbox) >= self.settings.broker.receive_maximum or self.inbox_bytes >= INBOX_BYTES)
               and not self.closing):
            self._room.wait(0.05)
            self._room.clear()
        self._inbox_in += len(payload)
        self._inbox.append((topic, payload, qos, mid))
        self._wake.set()

    def _ingest_loop(self) -> None:
        while True:
            self._wake.wait(0.05)
            self._wake.clear()
            while self._inbox:
                if self._pressure() == 2 and not self.closing:
                    # Over the unsealed limit: take nothing more until the seal catches up.
                    self._request_seal()
                    self._stop.wait(0.05)
                    continue
                taken = [self._inbox.popleft() for _ in range(min(len(self._inbox), MICRO_BATCH))]
                self._inbox_out += sum(len(m[1]) for m in taken)
                self._room.set()
                self.process(taken)
                self._commit_wanted.set()  # the committer fsyncs while this thread goes on
            if self._stop.is_set() or self.status.failed:
                return

    def process(self, messages: list[Message]) -> None:
        """Decode, check and store a micro-batch of messages; never raises."""
        now = self.clock.now_ms()
        assembled = assemble(messages, readings_root=self.settings.broker.topic_root,
                             context_prefix=self._context_prefix, now_ms=now, limits=self.limits)
        self.metrics.messages += len(messages)
        try:
            self._store(assembled)
        except DurabilityError as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug must not lose the messages: keep them in quarantine
            log.exception("internal error on a micro-batch of %d messages", len(messages))
            self.metrics.internal_errors += 1
            reason = f"internal error: {type(exc).__name__}: {exc}"
            fallback = Assembled(tokens=assembled.tokens, quarantine=[
                QuarantineRecord(received_at=now, topic=t, reason=reason, payload=payload_text(p))
                for t, p, _, _ in messages])
            try:
                self._store(fallback)
            except DurabilityError as durability:
                self._fail(str(durability))

    def _store(self, assembled: Assembled) -> None:
        records: list[bytes] = []
        stored = dropped = 0
        alerts: list[AlertEvent] = []
        # The guard keeps the log from rotating during the micro-batch, so every row lands
        # in the segment noted here; the lock is taken per batch so that readers (SQL, the
        # dashboard's series) wait for one batch at most, not the whole micro-batch.
        with self._segment_guard:
            segment = self.wal.segment_of_next_append
            # Lot context first: readings of a run that starts in this micro-batch are
            # judged against its recipe.
            with self._lock:
                context = [self.alerting.on_context(event) for event in assembled.context]
            for batch in assembled.batches:
                with self._lock:
                    kept, record = self._add_batch(segment, batch, alerts)
                stored += kept
                dropped += len(batch) - kept
                if record:
                    records.append(record)
            with self._lock:
                if assembled.singles:
                    kept, record = self._add_singles(segment, assembled.singles, alerts)
                    stored += kept
                    dropped += len(assembled.singles) - kept
                    if record:
                        records.append(record)
                for quarantined in assembled.quarantine:
                    records.append(encode_quarantine(quarantined))
                    self.unsealed.add_quarantine(segment, quarantined)
                for event in context:
                    records.append(encode_context(event))
                    self.unsealed.add_context(segment, event)
                self.wal.append_many(records, assembled.tokens)
                if alerts:
                    self.unsealed.add_alerts(segment, alerts)
                    self.alerting.appended(alerts)  # only now: in the log, for the next commit
                if self._sink_batches:
                    # After the append, so that the committer hands them over only once durable.
                    self._sink_pending.extend(self._sink_batches)
                    self._sink_batches.clear()
        self._close_full_segment(segment)
        self.metrics.alert_events += len(alerts)
        self.metrics.readings_stored += stored
        self.metrics.duplicates_dropped += dropped
        self.metrics.quarantined += len(assembled.quarantine)
        self.metrics.context_events += len(assembled.context)

    def _close_full_segment(self, segment: int) -> None:
        """Rotate the log once the active segment holds `segment_readings` (between
        micro-batches, so a segment's rows are those noted for it); the next seal takes it,
        one segment per child as always."""
        if self.unsealed.rows_of(segment) < self.segment_readings:
            return
        with self._segment_guard:
            if self.wal.segment_of_next_append != segment:
                return  # the seal job rotated meanwhile
            try:
                self.wal.rotate()
            except LogFull:
                pass  # stays active; the seal job and the commits deal with the full disk

    @staticmethod
    def _with_alerts(events: list[AlertEvent], record: bytes, alerts: list[AlertEvent]) -> bytes:
        """The alert events' record, then the readings' record that caused them: a log cut
        between the two keeps the alert and loses only readings the broker will deliver
        again, never the other way round."""
        if not events:
            return record
        alerts.extend(events)
        return encode_alerts(events) + record

    def _add_batch(self, segment: int, batch: ReadingBatch, alerts: list[AlertEvent]) -> tuple[int, bytes]:
        """Check one machine's batch against the ring; keep the new rows; judge them. Lock held."""
        layout = batch.layout
        masks = None
        if layout is not None:
            cache_key = (self.keys.token, batch.machine)
            key_of_code = layout.key_cache.get(cache_key)
            if key_of_code is None:
                key_of_code = layout.key_cache[cache_key] = self.keys.ids_local(batch.machine, batch.sensor_names)
            key_ids = key_of_code[batch.sensor_codes]
            masks = self.ring.insert_coded(key_of_code, batch.sensor_codes, batch.ts, batch.value)
        else:
            key_ids = self.keys.ids_for(batch.machine, batch.sensor_names, batch.sensor_codes)
        keep, verified = masks or self.ring.insert(key_ids, batch.ts, batch.value)
        kept = int(keep.sum())
        if kept < len(keep):
            batch = ReadingBatch(batch.machine, batch.sensor_names, batch.sensor_codes[keep],
                                 batch.ts[keep], batch.value[keep], None)
            key_ids, verified = key_ids[keep], verified[keep]
        if kept == 0:
            return 0, b""
        self.unsealed.add_readings(segment, key_ids, batch.ts, batch.value, verified)
        events = self.alerting.evaluate(batch.machine, key_ids, batch.ts, batch.value)
        if self.sinks:
            self._sink_batches.append(batch)
        return kept, self._with_alerts(events, encode_readings(batch), alerts)

    def _add_singles(self, segment: int, singles: list[SingleReading],
                     alerts: list[AlertEvent]) -> tuple[int, bytes]:
        """Many single-reading messages as one columnar batch; judged. Lock held."""
        id_of = self.keys.id_of
        key_ids = np.fromiter((id_of(m, s) for m, s, _, _ in singles), dtype=np.int32, count=len(singles))
        ts = np.fromiter((r[2] for r in singles), dtype=np.int64, count=len(singles))
        value = np.fromiter((r[3] for r in singles), dtype=np.float64, count=len(singles))
        keep, verified = self.ring.insert(key_ids, ts, value)
        if not keep.all():
            key_ids, ts, value, verified = key_ids[keep], ts[keep], value[keep], verified[keep]
        if len(ts) == 0:
            return 0, b""
        self.unsealed.add_readings(segment, key_ids, ts, value, verified)
        table, codes = np.unique(key_ids, return_inverse=True)
        machines = [self.keys.machines[k] for k in table.tolist()]
        sensors = [self.keys.sensors[k] for k in table.tolist()]
        record = encode_keyed_readings(machines, sensors, codes, ts, value)
        if self.sinks:
            self._sink_batches.extend(batches_by_machine(machines, sensors, codes, ts, value))
        events = self.alerting.evaluate(None, key_ids, ts, value)
        return len(ts), self._with_alerts(events, record, alerts)

    # ---- commit and acknowledge ----------------------------------------------------------
    def _commit_loop(self) -> None:
        interval = self.settings.ingest.commit_interval
        while not self._stop.is_set():
            # Woken by the ingest thread after each micro-batch; at most one fsync per
            # interval, so that many messages share it.
            self._commit_wanted.wait(interval)
            self._commit_wanted.clear()
            pause = interval - (time.monotonic() - self._last_commit)
            if pause > 0:
                time.sleep(pause)
            if self.wal.dirty or self._withheld:
                self.commit_and_ack()
            if self._log_full:
                self._stop.wait(LogFull.retry_after)  # not one failing write per millisecond

    def _pressure(self) -> int:
        """0: none; 1: seal early; 2: hold acknowledgements back (`UnsealedData.pressure`:
        counters, no lock, so the committer never waits here)."""
        return self.unsealed.pressure(self.settings.ingest.max_unsealed)

    def commit_and_ack(self) -> None:
        """Make everything appended durable, then acknowledge it (unless backpressure holds it)."""
        with self._commit_guard:
            self._last_commit = time.monotonic()
            self._commit_and_ack_locked()

    def _commit_and_ack_locked(self) -> None:
        # Appended before this commit, so covered by it (with those of a commit that found no room).
        alerts = self._alerts_uncommitted + self.alerting.take_appended()
        self._alerts_uncommitted = []
        # Batches appended before the commit are durable after it: only those go to the sinks.
        to_sinks = len(self._sink_pending)
        try:
            tokens = self.wal.commit()
        except LogFull as exc:
            # Not fail-stop: nothing reached the log's file (it was cut back), everything waits
            # in memory unacknowledged, and the broker holds back more than receive_maximum.
            self._alerts_uncommitted = alerts
            self._note_log_full(exc)
            return
        except DurabilityError as exc:
            self._fail(str(exc))
            return
        if self._log_full:
            self._log_full = False
            step_worked(self.metrics, LOG_STEP, at_ms=self.clock.now_ms())
        for _ in range(to_sinks):
            batch = self._sink_pending.popleft()
            for sink in self.sinks:
                sink.offer(batch)
        self.alerting.committed(alerts)
        self.metrics.commits += 1
        self._withheld.extend(tokens)
        pressure = self._pressure() if not self.closing else 0
        if pressure:
            self._request_seal()
        if pressure == 2:
            if not self.metrics.backpressure:
                log.warning("backpressure: %d bytes unsealed; holding acknowledgements until the seal "
                            "job catches up", self.unsealed.bytes)
            self.metrics.backpressure = True
            self.metrics.backpressure_commits += 1
            return
        self.metrics.backpressure = False
        tokens, self._withheld = self._withheld, []
        self._acknowledge(tokens)
        self.metrics.acked += len(tokens)

    def _note_log_full(self, exc: LogFull) -> None:
        """/health degraded with why and the fix; one ERROR line per spell of a full disk."""
        fix = (f"free space on the file system of {self.wal.directory}; ingestion acknowledges again by "
               "itself once the log fits")
        self.metrics.faults.failed(LOG_STEP, str(exc), at_ms=self.clock.now_ms(), fix=fix)
        if not self._log_full:
            log.error("%s: holding acknowledgements back. Fix: %s", exc, fix)
        self._log_full = True

    def _fail(self, reason: str) -> None:
        if self.status.fail(reason):
            self.close()
