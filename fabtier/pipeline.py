"""The running pipeline: wires subscriber, log, hot ring, unsealed buffer, lake and scheduler.

Order of a reading's life here: decode -> (under the ingest lock) duplicate check in the
hot ring -> append to the write-ahead log -> visible in SQL; then the committer thread
fsyncs the log and acknowledges the message to the broker. The seal job rotates the log
and moves closed segments into Parquet (copy, verify, audit, then delete the segment).
A failure to make the log durable stops ingestion for good (fail-stop): acknowledging
anything after such a failure could lose data, and a restart recovers from the log.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from analytics.session import SqlSources
from fabtier.clock import Clock, SystemClock
from fabtier.config import Settings
from fabtier.datadir import DataDirLock
from fabtier.errors import DurabilityError
from ingest.codec import Limits, PayloadError, ReadingBatch, decode_context, decode_readings
from ingest.subscriber import Subscriber
from ingest.wal import WriteAheadLog, read_segment
from ingest.walformat import QuarantineRecord, encode_context, encode_quarantine, encode_readings
from lifecycle.audit import AuditLog
from tiers.cold import ColdLake
from tiers.hot import HotRing
from tiers.keys import SensorKeys
from tiers.store import settings_store
from tiers.unsealed import UnsealedData, merge_tables, tables_from_records

log = logging.getLogger("fabtier.pipeline")
QUARANTINE_PAYLOAD_LIMIT = 64 * 1024


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


@dataclass(frozen=True)
class SealReport:
    segments: int
    rows: int
    files: int


def payload_text(payload: bytes) -> str:
    text = payload[:QUARANTINE_PAYLOAD_LIMIT].decode("utf-8", errors="replace")
    if len(payload) > QUARANTINE_PAYLOAD_LIMIT:
        text += f"... [{len(payload) - QUARANTINE_PAYLOAD_LIMIT} more bytes not kept]"
    return text


class Pipeline:
    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
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
        self._stop = threading.Event()
        self._closing = False
        self.failure: str | None = None
        self.wal: WriteAheadLog | None = None
        self.subscriber: Subscriber | None = None
        self._dir_lock: DataDirLock | None = None
        self._committer: threading.Thread | None = None

    # ---- start and stop -------------------------------------------------------------
    def open(self, *, warm: bool = True) -> None:
        """Take the data directory, recover what an earlier run left, warm the hot ring."""
        self.state = State.RECOVERING
        self._dir_lock = DataDirLock(self.settings.data_dir, exclusive=True)
        self.wal = WriteAheadLog(self.settings.data_dir / "wal")
        leftover = self.wal.leftover_segments()
        if leftover:
            log.info("recovering %d log segment(s) left by an earlier run", len(leftover))
        self.seal()
        if warm:
            self._warm_ring()

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
            topics=[f"{broker.topic_root}/#", f"{broker.ctx_root}/#"],
            on_message=self.handle_message, username=broker.username,
            password=broker.password.reveal(), session_expiry=broker.session_expiry,
            keepalive=broker.keepalive,
        )
        self._committer = threading.Thread(target=self._commit_loop, name="wal-commit", daemon=True)
        self._committer.start()
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
        if self._committer is not None:
            self._committer.join()
        if not failed and self.wal is not None:
            self._commit_and_ack()
        if self.subscriber is not None:
            time.sleep(0.1)  # lets paho's network thread send the last acknowledgements
            self.subscriber.stop()
        if seal and not failed and self.wal is not None:
            self.seal()
        if self.wal is not None and not failed:
            self.wal.close()
        if self._dir_lock is not None:
            self._dir_lock.release()
        if not failed:
            self.state = State.STOPPED

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    # ---- ingest ------------------------------------------------------------------------
    def handle_message(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        """Called by the subscriber for every message; never raises."""
        if self._closing:
            return
        token = mid if qos > 0 else None
        now = self.clock.now_ms()
        try:
            self.metrics.messages += 1
            try:
                if topic.startswith(self._context_prefix):
                    event = decode_context(topic, payload, root=self.settings.broker.ctx_root,
                                           now_ms=now, limits=self.limits)
                    with self._lock:
                        segment = self.wal.append(encode_context(event), token)
                        self.unsealed.add_context(segment, event)
                    self.metrics.context_events += 1
                    return
                batch = decode_readings(topic, payload, root=self.settings.broker.topic_root,
                                        now_ms=now, limits=self.limits)
            except PayloadError as exc:
                self._quarantine(topic, payload, exc.reason, now, token)
                return
            self._store(batch, token)
        except DurabilityError as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug must not lose the message: keep it in quarantine
            log.exception("internal error on a message on %s", topic)
            self.metrics.internal_errors += 1
            try:
                self._quarantine(topic, payload, f"internal error: {type(exc).__name__}: {exc}", now, token)
            except DurabilityError as durability:
                self._fail(str(durability))

    def _quarantine(self, topic: str, payload: bytes, reason: str, now: int, token: int | None) -> None:
        record = QuarantineRecord(received_at=now, topic=topic, reason=reason, payload=payload_text(payload))
        with self._lock:
            segment = self.wal.append(encode_quarantine(record), token)
            self.unsealed.add_quarantine(segment, record)
        self.metrics.quarantined += 1

    def _store(self, batch: ReadingBatch, token: int | None) -> None:
        with self._lock:
            key_ids = self.keys.ids_for(batch.machine, batch.sensor_names, batch.sensor_codes)
            keep, verified = self.ring.insert(key_ids, batch.ts, batch.value)
            kept = int(keep.sum())
            if kept < len(keep):
                self.metrics.duplicates_dropped += len(keep) - kept
                batch = ReadingBatch(batch.machine, batch.sensor_names, batch.sensor_codes[keep],
                                     batch.ts[keep], batch.value[keep])
                key_ids, verified = key_ids[keep], verified[keep]
            if kept == 0:
                self.wal.append(b"", token)  # all seen before: acknowledge with the next commit
                return
            segment = self.wal.append(encode_readings(batch), token)
            self.unsealed.add_readings(segment, key_ids, batch.ts, batch.value, verified)
        self.metrics.readings_stored += kept

    def _commit_loop(self) -> None:
        interval = self.settings.ingest.commit_interval
        while not self._stop.wait(interval):
            if self.wal.dirty:
                self._commit_and_ack()

    def _commit_and_ack(self) -> None:
        try:
            tokens = self.wal.commit()
        except DurabilityError as exc:
            self._fail(str(exc))
            return
        self.metrics.commits += 1
        for mid in tokens:
            self.subscriber.ack(mid)
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
            with self._lock:
                self.wal.rotate()
                due = [s for s in self.wal.segments() if s != self.wal.active]
            rows = files = done = 0
            for segment in due:
                with self._lock:
                    in_memory = segment in self.unsealed.segments()
                    tables = self.unsealed.tables([segment]) if in_memory else None
                if tables is None:
                    tables = tables_from_records(read_segment(self.wal.path(segment)))
                try:
                    moves = self.lake.write_segment(segment, tables, source=self.wal.path(segment).as_uri())
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
        )

    def series(self, machine: str, sensor: str, *, since_ms: int, points: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            key = self.keys.lookup(machine, sensor)
            if key is None:
                return np.empty(0, np.int64), np.empty(0, np.float64)
            return self.ring.series(key, since=since_ms, points=points)

    def sensors(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(zip(self.keys.machines, self.keys.sensors))

    def metrics_snapshot(self) -> dict:
        with self._lock:
            unsealed_rows = self.unsealed.rows
            ring_rows = len(self.ring)
        return {**asdict(self.metrics), "state": self.state.value, "unsealed_rows": unsealed_rows,
                "hot_ring_rows": ring_rows, "wal_segment": self.wal.active if self.wal else None}

    def close_offline(self) -> None:
        """Release what `open()` took, for a pipeline that never subscribed."""
        if self.wal is not None:
            self.wal.close()
        if self._dir_lock is not None:
            self._dir_lock.release()
        self.state = State.STOPPED
