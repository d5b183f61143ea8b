"""The running pipeline: wires subscriber, log, hot ring, unsealed buffer, lake and scheduler.

Order of a reading's life here: decode -> (under the ingest lock) duplicate check in the
hot ring -> append to the write-ahead log -> visible in SQL; then the committer thread
fsyncs the log and acknowledges the message to the broker. The seal job rotates the log
and moves closed segments into Parquet (copy, verify, audit, then delete the segment).
A failure to make the log durable stops ingestion for good (fail-stop): acknowledging
anything after such a failure could lose data, and a restart recovers from the log.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from analytics.session import SqlSources
from fabtier.clock import Clock, SystemClock
from fabtier.config import Settings
from fabtier.datadir import DataDirLock
from fabtier import forked
from fabtier.errors import DurabilityError
from ingest.alerting import Alerting
from ingest.assemble import Assembled, assemble, payload_text
from ingest.codec import Limits, ReadingBatch, SingleReading, batches_by_machine
from ingest.subscriber import Subscriber
from ingest.wal import WriteAheadLog, read_segment

from ingest.walformat import (QuarantineRecord, encode_alerts, encode_context, encode_keyed_readings,
                              encode_quarantine, encode_readings)
from lifecycle.audit import AuditLog
from tiers.cold import ColdLake
from tiers.hot import HotRing
from tiers.keys import SensorKeys
from tiers.store import settings_store
from tiers.unsealed import UnsealedData, merge_tables, tables_from_records
from tiers.warm import WarmStore

log = logging.getLogger("fabtier.pipeline")

# Lock-free tries of a series read before waiting for the ingest lock; a try fails only while
# the row is rewritten by a merge of out-of-order readings or the ring changes its layout.
_SERIES_ATTEMPTS = 20
_SERIES_RETRY_PAUSE_S = 50e-6  # lets the writer finish the numpy call it is in
# Messages decoded and stored together at most. Small enough that the log is committed
# (and messages acknowledged, alerts delivered) every few milliseconds under full load.
MICRO_BATCH = 128
SEAL_CHILD_NICENESS = 10
SEAL_CHILD_TIMEOUT = 1800.0  # s; a child that hangs this long is killed and the seal redone here


def _lower_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(SEAL_CHILD_NICENESS)


class SealError(Exception):
    """Writing a segment into the lake failed (the segment stays and is retried)."""


class State(enum.Enum):
    CREATED = "created"
    RECOVERING = "recovering"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class Metrics:
    messages: int = 0
    readings_stored: int = 0
    duplicates_dropped: int = 0
    quarantined: int = 0
    context_events: int = 0
    acked: int = 0
    commits: int = 0
    segments_sealed: int = 0
    rows_sealed: int = 0
    seal_failures: int = 0
    internal_errors: int = 0
    backpressure: bool = False  # acknowledgements are being held back right now
    backpressure_commits: int = 0  # group commits whose acknowledgements were held back
    alert_events: int = 0


@dataclass(frozen=True)
class SealReport:
    segments: int
    rows: int
    files: int


def subscription_topics(topic_root: str, ctx_root: str, share_group: str) -> list[str]:
    topics = [f"{topic_root}/#", f"{ctx_root}/#"]
    return [f"$share/{share_group}/{t}" for t in topics] if share_group else topics


def warm_sources(pipeline: "Pipeline") -> dict:
    """The warm tier's part of a SQL snapshot (issue 5)."""
    from lifecycle.warmjobs import agg_dataset
    return {"warm_1m": pipeline.warm.snapshot() if pipeline.warm else None,
            "cold_agg_1m": agg_dataset(pipeline.lake.store), "job_history": pipeline.job_history()}


class Pipeline:
    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 alert_sinks: list | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.state = State.CREATED
        self.metrics = Metrics()
        self.keys = SensorKeys()
        window_ms = int(settings.hot.window * 1000)
        self.ring = HotRing(window_ms=window_ms, memory_budget=settings.hot.memory_budget,
                            covered_from=self.clock.now_ms() - window_ms)
        self.unsealed = UnsealedData(self.keys)
        self.lake = ColdLake(settings_store(settings), writer_id=settings.cold.writer_id)
        self.audit = AuditLog(settings.data_dir / "audit" / "moves.jsonl")
        self.limits = Limits(
            max_future_ms=int(settings.ingest.max_future * 1000),
            max_late_ms=int(settings.ingest.max_late * 1000),
            max_payload=settings.ingest.max_payload,
        )
        broker = settings.broker
        self._readings_prefix = broker.topic_root + "/"
        self._context_prefix = broker.ctx_root + "/"
        # Guards the ring, the unsealed buffer, the key table and the pairing of a log
        # append with the segment it went to (rotation takes it too).
        self._lock = threading.Lock()
        self._seal_lock = threading.Lock()
        self._segment_guard = threading.Lock()  # no log rotation inside an ingest micro-batch
        self._stop = threading.Event()
        self._inbox: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._room = threading.Event()  # the inbox has room again
        self._ingester: threading.Thread | None = None
        self._closing = False
        self.failure: str | None = None
        self.wal: WriteAheadLog | None = None
        self.subscriber: Subscriber | None = None
        self._dir_lock: DataDirLock | None = None
        self._committer: threading.Thread | None = None
        self.warm: WarmStore | None = None  # the warm tier's DuckDB file, opened with the data dir
        # Optional time-series sinks (tiers/sinks.py): batches wait here until their commit.
        self.sinks: list = []
        self._sink_pending: collections.deque = collections.deque()
        self._sink_batches: list[ReadingBatch] = []  # this micro-batch's, until its log append
        self._withheld: list[int] = []  # durable, acknowledgement held back (backpressure)
        self._commit_guard = threading.Lock()  # the committer, and stop(), commit
        self._commit_wanted = threading.Event()
        self._last_commit = 0.0
        self._early_seal: threading.Thread | None = None
        # Rules, recipe limits and the alert outbox; `alert_sinks` replaces the configured
        # sinks (MQTT, webhook, SNS) when given.
        self.alerting = Alerting(settings, self.keys, clock=self.clock, lock=self._lock, sinks=alert_sinks)

    # ---- start and stop -------------------------------------------------------------
    def open(self, *, warm: bool = True) -> None:
        """Take the data directory, recover what an earlier run left, warm the hot ring."""
        self.state = State.RECOVERING
        self._dir_lock = DataDirLock(self.settings.data_dir, exclusive=True)
        self.warm = WarmStore(self.settings.data_dir / "warm.duckdb")
        self.wal = WriteAheadLog(self.settings.data_dir / "wal")
        leftover = self.wal.leftover_segments()
        if leftover:
            log.info("recovering %d log segment(s) left by an earlier run", len(leftover))
        self.seal()
        if warm:
            self._warm_ring()
        self._recover_alerts()

    def _recover_alerts(self) -> None:
        """Open excursions, lot context and undelivered alerts, from the lake and the log."""
        hidden = set(self.wal.segments())
        on_disk = [s for s in hidden if s != self.wal.active]
        tables = tables_from_records([r for s in on_disk for r in read_segment(self.wal.path(s))])
        since = pa.scalar(self.clock.now_ms() - int(self.settings.ingest.max_late * 1000),
                          pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        context = self.lake.dataset("context", hidden).to_table(filter=ds.field("ts") >= since)
        self.alerting.recover(pa.concat_tables([self.lake.dataset("alerts", hidden).to_table(), tables.alerts]),
                              pa.concat_tables([context, tables.context]))

    def _warm_ring(self) -> None:
        now = self.clock.now_ms()
        recent = self.lake.readings_since(now - self.ring.window_ms)
        if recent.num_rows:
            machines = recent.column("machine").to_pylist()
            sensors = recent.column("sensor").to_pylist()
            key_ids = np.fromiter((self.keys.id_of(m, s) for m, s in zip(machines, sensors)),
                                  dtype=np.int32, count=recent.num_rows)
            ts = recent.column("ts").cast("int64").to_numpy()
            with self._lock:
                self.ring.insert(key_ids, ts, recent.column("value").to_numpy())
            log.info("hot ring warmed with %d readings from the lake", recent.num_rows)

    def start(self) -> None:
        """Open, then subscribe; returns once the broker confirmed the subscription."""
        if self.wal is None:
            self.open()
        broker = self.settings.broker
        self.subscriber = Subscriber(
            url=broker.url, client_id=broker.client_id,
            topics=subscription_topics(broker.topic_root, broker.ctx_root, broker.share_group),
            on_message=self.handle_message, username=broker.username,
            password=broker.password.reveal(), session_expiry=broker.session_expiry,
            keepalive=broker.keepalive, receive_maximum=broker.receive_maximum,
        )
        from tiers.sinks import open_sinks
        self.sinks = open_sinks(self.settings)
        self._committer = threading.Thread(target=self._commit_loop, name="wal-commit", daemon=True)
        self._committer.start()
        self._ingester = threading.Thread(target=self._ingest_loop, name="ingest", daemon=True)
        self._ingester.start()
        self.alerting.start()
        self.subscriber.start()
        if self.state is State.RECOVERING:
            self.state = State.READY

    def stop(self, *, seal: bool = True) -> None:
        """Stop taking messages, make everything taken durable and acknowledged, then seal."""
        if self.state in (State.STOPPED, State.CREATED):
            return
        failed = self.state is State.FAILED
        self.state = State.STOPPING if not failed else State.FAILED
        # Messages that arrive from here on are left unacknowledged: the broker keeps them
        # in our persistent session and delivers them again on the next start.
        self._closing = True
        self._stop.set()
        self._wake.set()
        if self._ingester is not None:
            self._ingester.join()  # takes what is queued before it ends
        if self._committer is not None:
            self._committer.join()
        if not failed and self.wal is not None:
            self._commit_and_ack()
        if self.subscriber is not None:
            time.sleep(0.1)  # lets paho's network thread send the last acknowledgements
            self.subscriber.stop()
        for sink in self.sinks:
            sink.stop()
        self.alerting.stop()
        if seal and not failed and self.wal is not None:
            self.seal()
        if self.wal is not None and not failed:
            self.wal.close()
        if self.warm is not None:
            self.warm.close()
        if self._dir_lock is not None:
            self._dir_lock.release()
        if not failed:
            self.state = State.STOPPED

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    # ---- ingest ------------------------------------------------------------------------
    def handle_message(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        """Called by the subscriber (paho's network thread) for every message; never raises.

        It only queues the message: the ingest thread takes the queue in micro-batches, so
        that many small messages share one duplicate check, one log append and one lock.
        The queue is bounded by the broker: it delivers at most `receive_maximum` messages
        that we have not acknowledged yet.
        """
        if self._closing:
            return  # left unacknowledged: the broker delivers it again on the next start
        # A broker that ignores our receive maximum is held off by TCP instead: this thread
        # stops reading the socket while the queue is full.
        while len(self._inbox) >= self.settings.broker.receive_maximum and not self._closing:
            self._room.wait(0.05)
            self._room.clear()
        self._inbox.append((topic, payload, qos, mid))
        self._wake.set()

    def _ingest_loop(self) -> None:
        while True:
            self._wake.wait(0.05)
            self._wake.clear()
            while self._inbox:
                if self._pressure() == 2 and not self._closing:
                    # Over the unsealed limit: take nothing more until the seal catches up.
                    self._seal_soon()
                    self._stop.wait(0.05)
                    continue
                taken = [self._inbox.popleft() for _ in range(min(len(self._inbox), MICRO_BATCH))]
                self._room.set()
                self.process(taken)
                self._commit_wanted.set()  # the committer fsyncs while this thread goes on
            if self._stop.is_set() or self.state is State.FAILED:
                return

    def process(self, messages: list[tuple[str, bytes, int, int]]) -> None:
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

    def _store(self, assembled: "Assembled") -> None:
        records: list[bytes] = []
        stored = dropped = 0
        alerts: list = []
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
                for record in assembled.quarantine:
                    records.append(encode_quarantine(record))
                    self.unsealed.add_quarantine(segment, record)
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
        self.metrics.alert_events += len(alerts)
        self.metrics.readings_stored += stored
        self.metrics.duplicates_dropped += dropped
        self.metrics.quarantined += len(assembled.quarantine)
        self.metrics.context_events += len(assembled.context)

    def _with_alerts(self, events: list, record: bytes, alerts: list) -> bytes:
        """The alert events' record, then the readings' record that caused them: a log cut
        between the two keeps the alert and loses only readings the broker will deliver
        again, never the other way round."""
        if not events:
            return record
        alerts.extend(events)
        return encode_alerts(events) + record

    def _add_batch(self, segment: int, batch: ReadingBatch, alerts: list) -> tuple[int, bytes]:
        """Check one machine's batch against the ring; keep the new rows; judge them. Lock held."""
        layout = batch.layout
        masks = None
        if layout is not None:
            cache_key = (self.keys.token, batch.machine)
            key_of_code = layout.key_cache.get(cache_key)
            if key_of_code is None:
                key_of_code = layout.key_cache[cache_key] = self.keys.ids_local(batch.machine, batch.sensor_names)
            key_ids = key_of_code[batch.sensor_codes]
            masks = self.ring.insert_grouped(key_of_code[layout.group_codes], layout, batch.ts, batch.value)
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

    def _add_singles(self, segment: int, singles: list[SingleReading], alerts: list) -> tuple[int, bytes]:
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
                self._commit_and_ack()

    def _pressure(self) -> int:
        """0: none; 1: seal early; 2: hold acknowledgements back."""
        used = self.unsealed.bytes  # a counter: no lock, so the committer never waits here
        limit = self.settings.ingest.max_unsealed
        return 2 if used > limit else 1 if used > limit // 2 else 0

    def _seal_soon(self) -> None:
        if self._early_seal is not None and self._early_seal.is_alive():
            return
        from lifecycle.scheduler import run_scheduled  # the job runner keeps one seal at a time

        self._early_seal = threading.Thread(target=run_scheduled, args=(self, "seal"), name="early-seal",
                                            daemon=True)
        self._early_seal.start()

    def _commit_and_ack(self) -> None:
        with self._commit_guard:
            self._last_commit = time.monotonic()
            self._commit_and_ack_locked()

    def _commit_and_ack_locked(self) -> None:
        alerts = self.alerting.take_appended()  # appended before this commit, so covered by it
        # Batches appended before the commit are durable after it: only those go to the sinks.
        to_sinks = len(self._sink_pending)
        try:
            tokens = self.wal.commit()
        except DurabilityError as exc:
            self._fail(str(exc))
            return
        for _ in range(to_sinks):
            batch = self._sink_pending.popleft()
            for sink in self.sinks:
                sink.offer(batch)
        self.alerting.committed(alerts)
        self.metrics.commits += 1
        self._withheld.extend(tokens)
        pressure = self._pressure() if not self._closing else 0
        if pressure:
            self._seal_soon()
        if pressure == 2:
            if not self.metrics.backpressure:
                log.warning("backpressure: %d bytes unsealed; holding acknowledgements until the seal "
                            "job catches up", self.unsealed.bytes)
            self.metrics.backpressure = True
            self.metrics.backpressure_commits += 1
            return
        self.metrics.backpressure = False
        tokens, self._withheld = self._withheld, []
        self.subscriber.ack_many(tokens)
        self.metrics.acked += len(tokens)

    def _fail(self, reason: str) -> None:
        if self.state is State.FAILED:
            return
        log.critical("ingestion stopped: %s", reason)
        self.failure = reason
        self.state = State.FAILED
        self._closing = True
        self._stop.set()

    # ---- tier moves ------------------------------------------------------------------
    @property
    def seal_lock(self) -> threading.Lock:
        """Held by every job that writes or deletes this writer's lake files."""
        return self._seal_lock

    def seal(self) -> SealReport:
        """Move every closed log segment into the lake. Idempotent; never runs twice at once."""
        with self._seal_lock:
            with self._segment_guard, self._lock:
                self.wal.rotate()
                due = [s for s in self.wal.segments() if s != self.wal.active]
            rows = files = done = 0
            for segment in due:
                with self._lock:
                    in_memory = segment in self.unsealed.segments()
                try:
                    moves = self._write_segment(segment, in_memory)
                except Exception:
                    # The segment stays in the log and in memory; the next run retries it.
                    self.metrics.seal_failures += 1
                    log.exception("sealing log segment %d failed; it will be retried", segment)
                    continue
                self.audit.record("seal", moves, self.clock.now_ms())
                with self._lock:
                    self.wal.delete(segment)
                    self.unsealed.drop(segment)
                done += 1
                rows += sum(m.rows for m in moves if m.what == "raw")
                files += len(moves)
            self.metrics.segments_sealed += done
            self.metrics.rows_sealed += rows
            return SealReport(segments=done, rows=rows, files=files)

    def _write_segment(self, segment: int, in_memory: bool) -> list:
        """One closed segment into the lake (copy and verify); the moves made."""
        source = self.wal.path(segment).as_uri()
        if in_memory and self.settings.cold.seal_in_child and forked.available():
            def in_child() -> list:
                # Below ingestion in the CPU's queue: on a busy machine the seal takes longer,
                # not the alerts. SCHED_IDLE (Linux) runs it only on otherwise idle CPU; if
                # the machine never idles, unsealed rows reach [ingest] max_unsealed and
                # backpressure slows ingestion until the seal gets its turn.
                _lower_priority()
                if self._dir_lock is not None:
                    self._dir_lock.close_inherited()
                self.lake.after_fork()
                return self.lake.write_segment(segment, self.unsealed.sealable([segment]), source=source)
            try:
                return forked.call_in_fork(in_child, timeout=SEAL_CHILD_TIMEOUT)
            except forked.ChildFailed as exc:
                raise SealError(f"sealing segment {segment} failed: {exc}") from None
            except forked.ChildLost as exc:
                log.warning("sealing segment %d in a child process: %s; sealing it in this process", segment, exc)
        # Outside the lock: the segment is closed (rotation waited for the last micro-batch
        # that wrote to it), so nothing changes its rows any more, and sorting millions of
        # them must not stop ingestion or readers meanwhile.
        tables = self.unsealed.sealable([segment]) if in_memory else None
        if tables is None:
            tables = tables_from_records(read_segment(self.wal.path(segment)))
        return self.lake.write_segment(segment, tables, source=source)

    # ---- reads -------------------------------------------------------------------------
    def sql_sources(self) -> SqlSources:
        with self._lock:
            in_memory = self.unsealed.segments()
            on_disk = self.wal.segments()
            tables = self.unsealed.tables(in_memory)
        # Segments that are only on disk: an earlier run's, whose sealing failed at start.
        only_on_disk = [s for s in on_disk if s not in in_memory and s != self.wal.active]
        if only_on_disk:
            tables = merge_tables(tables, tables_from_records(
                [r for s in only_on_disk for r in read_segment(self.wal.path(s))]))
        hidden = set(in_memory) | set(on_disk)
        return SqlSources(
            cold_raw=self.lake.raw_datasets(hidden),
            cold_quarantine=self.lake.dataset("quarantine", hidden),
            cold_context=self.lake.dataset("context", hidden),
            hot_fresh=tables.fresh,
            hot_late=tables.late,
            hot_quarantine=tables.quarantine,
            hot_context=tables.context,
            audit=self.audit.table(),
            **warm_sources(self),
            cold_alerts=self.lake.dataset("alerts", hidden),
            hot_alerts=tables.alerts,
            recipe_limits=self.alerting.book.table(),
        )

    def tier_rows(self) -> list:
        """`fabtier tiers` for a running pipeline: the hot ring and unsealed log, then the stores."""
        from tiers import inventory
        with self._lock:
            hot = inventory.hot_ring_row(self.ring)
            readings = self.unsealed.tables(self.unsealed.segments()).readings
        wal_bytes = sum(self.wal.path(s).stat().st_size for s in self.wal.segments()
                        if self.wal.path(s).exists())
        return [hot, inventory.unsealed_row(readings, wal_bytes),
                *inventory.stored_rows(self.lake.store, self.settings.store_url, self.warm.stats())]

    def job_history(self):
        from lifecycle.scheduler import runner_for
        return runner_for(self).history.table()

    def series(self, machine: str, sensor: str, *, since_ms: int, points: int,
               timings: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One sensor's recent readings from the hot ring, read without the ingest lock (see
        `HotRing.read_series`); only a row that stays busy sends it to wait for the lock.
        `timings` gets the ring's answer time in microseconds (`query_us`: retries and any
        wait for the lock included), the part spent waiting for the lock (`wait_us`, 0
        unless it fell back), whether it fell back (`fell_back`), and the wait to get the
        interpreter lock back before the read began (`gil_wait_us`)."""
        asked = time.perf_counter()
        # Give the interpreter lock up and take it back: the threads waiting for it then start
        # a new switch interval (0.5 ms), so the read (tens of us) runs without being made to
        # hand the lock over mid-way, which would cost it a switch interval or more.
        time.sleep(0)
        began = time.perf_counter()
        key = self.keys.lookup(machine, sensor)  # one dict lookup: safe beside the writer
        if key is None:
            found = np.empty(0, np.int64), np.empty(0, np.float64)
        else:
            found = self.ring.read_series(key, since=since_ms, points=points)
            for _ in range(_SERIES_ATTEMPTS - 1):
                if found is not None:
                    break
                time.sleep(_SERIES_RETRY_PAUSE_S)
                found = self.ring.read_series(key, since=since_ms, points=points)
        read = time.perf_counter()
        locked = read
        if found is None:
            with self._lock:
                locked = time.perf_counter()
                found = self.ring.series(key, since=since_ms, points=points)
        done = time.perf_counter()
        if timings is not None:
            timings["wait_us"] = round((locked - read) * 1e6, 1)
            timings["query_us"] = round((done - began) * 1e6, 1)
            timings["fell_back"] = locked != read
            timings["gil_wait_us"] = round((began - asked) * 1e6, 1)
        return found

    def sensors(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(zip(self.keys.machines, self.keys.sensors))

    def metrics_snapshot(self) -> dict:
        with self._lock:
            unsealed_rows = self.unsealed.rows
            ring_rows = len(self.ring)
        return {**asdict(self.metrics), "state": self.state.value, "unsealed_rows": unsealed_rows,
                "inbox": len(self._inbox), "acks_withheld": len(self._withheld),
                "hot_ring_rows": ring_rows, "wal_segment": self.wal.active if self.wal else None,
                "sinks": {sink.destination.name: sink.stats.snapshot() for sink in self.sinks},
                "alerts": self.alerting.metrics()}

    def close_offline(self) -> None:
        """Release what `open()` took, for a pipeline that never subscribed."""
        if self.wal is not None:
            self.wal.close()
        if self.warm is not None:
            self.warm.close()
        if self._dir_lock is not None:
            self._dir_lock.release()
        self.state = State.STOPPED
