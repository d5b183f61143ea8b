"""The pipeline: the parts a reading passes through, and the three roles that use them.

Wiring, top to bottom:
- parts: sensor keys, hot ring, unsealed buffer, lake, audit trail, alerting (built here);
  data directory lock, warm store, write-ahead log (taken by `open`);
- roles: `Ingestor` (fabtier.ingestion: messages in, logged, acknowledged), `Sealer`
  (fabtier.sealing: closed log segments into the lake), `Reads` (fabtier.reads: SQL, series,
  tiers, metrics), made by `open` once the log exists;
- `start` subscribes and starts the ingest and commit threads; `stop` drains, acknowledges,
  seals and lets go of the data directory.
The scheduler (lifecycle.scheduler) and the HTTP API (fabtier.api) are wired around a
pipeline by `fabtier.runner`.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from alerts.service import Alerting
from analytics.session import SqlSources
from core.brokerconn import broker_tls
from core.clock import SystemClock
from core.protocols import AlertSink, Clock
from core.settings import Settings
from fabtier.datadir import DataDirLock, ensure_identity
from fabtier.ingestion import Ingestor, Message
from fabtier.reads import Reads
from fabtier.runstate import Metrics, State, Status
from fabtier.sealing import Sealer
from ingest.subscriber import Subscriber
from ingest.wal import WriteAheadLog, read_segment
from lifecycle import scheduler
from lifecycle.audit import AuditLog
from tiers import catalog
from tiers.cold import ColdLake, SealReport
from tiers.hot import HotRing
from tiers.influx import InfluxDestination
from tiers.inventory import TierRow
from tiers.keys import SensorKeys
from tiers.sinks import Destination, SinkQueue
from tiers.store import settings_store
from tiers.timestream import TimestreamDestination
from tiers.unsealed import UnsealedData, tables_from_records
from tiers.warm import WarmStore

log = logging.getLogger("fabtier.pipeline")


def subscription_topics(topic_root: str, ctx_root: str, share_group: str) -> list[str]:
    topics = [f"{topic_root}/#", f"{ctx_root}/#"]
    return [f"$share/{share_group}/{t}" for t in topics] if share_group else topics


def open_sinks(settings: Settings) -> list[SinkQueue]:
    """The configured time-series sinks (Timestream, InfluxDB), prepared and started."""
    destinations: list[tuple[Destination, int]] = []
    if settings.timestream.enabled:
        destinations.append((TimestreamDestination(settings.timestream), settings.timestream.queue_readings))
    if settings.influx.enabled:
        destinations.append((InfluxDestination(settings.influx), settings.influx.queue_readings))
    return [SinkQueue(destination, max_readings=queue).start() for destination, queue in destinations]


class Pipeline:
    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 alert_sinks: list[AlertSink] | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.status = Status()
        self.metrics = Metrics()
        self.keys = SensorKeys()
        window_ms = int(settings.hot.window * 1000)
        self.ring = HotRing(window_ms=window_ms, memory_budget=settings.hot.memory_budget,
                            covered_from=self.clock.now_ms() - window_ms)
        self.unsealed = UnsealedData(self.keys)
        # The store takes the pipeline's clock: a local store's simulated restores follow it.
        self._lake = ColdLake(settings_store(settings, clock=self.clock), writer_id=settings.cold.writer_id)
        self.audit = AuditLog(settings.data_dir / "audit" / "moves.jsonl")
        # Guards the ring, the unsealed buffer, the key table, the alert state and the pairing
        # of a log append with the segment it went to (rotation takes it too).
        self._lock = threading.Lock()
        self._segment_guard = threading.Lock()  # no log rotation inside an ingest micro-batch
        # Rules, recipe limits and the alert outbox; `alert_sinks` replaces the configured
        # sinks (MQTT, webhook, SNS) when given.
        self.alerting = Alerting(settings, self.keys, clock=self.clock, lock=self._lock, sinks=alert_sinks)
        self._dir_lock: DataDirLock | None = None
        self.identity: str | None = None  # the data directory's (fabtier.datadir), once open
        self.warm: WarmStore | None = None  # the warm tier's DuckDB file, opened with the data dir
        self.wal: WriteAheadLog | None = None
        self.subscriber: Subscriber | None = None
        self._ingestor: Ingestor | None = None
        self._sealer: Sealer | None = None
        self._reads: Reads | None = None
        self._early_seal: threading.Thread | None = None
        self._early_seal_lock = threading.Lock()

    @property
    def lake(self) -> ColdLake:
        return self._lake

    @lake.setter
    def lake(self, lake: ColdLake) -> None:
        """Another lake for every role (the fault tests put a failing store in front)."""
        self._lake = lake
        for role in (self._sealer, self._reads):
            if role is not None:
                role.lake = lake

    # ---- the roles, once `open` made them ---------------------------------------------------
    @property
    def ingestor(self) -> Ingestor:
        if self._ingestor is None:
            raise RuntimeError("the pipeline is not open")
        return self._ingestor

    @property
    def sealer(self) -> Sealer:
        if self._sealer is None:
            raise RuntimeError("the pipeline is not open")
        return self._sealer

    @property
    def reads(self) -> Reads:
        if self._reads is None:
            raise RuntimeError("the pipeline is not open")
        return self._reads

    # ---- start and stop -------------------------------------------------------------
    def open(self, *, warm: bool = True) -> None:
        """Take the data directory, recover what an earlier run left, warm the hot ring."""
        self.status.move(State.RECOVERING)
        self._dir_lock = DataDirLock(self.settings.data_dir, exclusive=True)
        self.identity = ensure_identity(self.settings.data_dir)
        self.warm = WarmStore(self.settings.data_dir / "warm.duckdb")
        self.wal = WriteAheadLog(self.settings.data_dir / "wal")
        self._ingestor = Ingestor(
            settings=self.settings, clock=self.clock, status=self.status, metrics=self.metrics,
            keys=self.keys, ring=self.ring, unsealed=self.unsealed, alerting=self.alerting, wal=self.wal,
            lock=self._lock, segment_guard=self._segment_guard, acknowledge=self._acknowledge,
            request_seal=self._seal_soon)
        self._sealer = Sealer(
            settings=self.settings, clock=self.clock, metrics=self.metrics, wal=self.wal,
            unsealed=self.unsealed, lake=self.lake, audit=self.audit, lock=self._lock,
            segment_guard=self._segment_guard, dir_lock=self._dir_lock)
        self._reads = Reads(
            settings=self.settings, status=self.status, metrics=self.metrics, keys=self.keys, ring=self.ring,
            unsealed=self.unsealed, wal=self.wal, lake=self.lake, audit=self.audit, warm=self.warm,
            alerting=self.alerting, lock=self._lock, ingest_figures=self._ingest_figures)
        # The lake's catalog from a listing: what changed while no fabtier ran (or before the
        # catalog existed) is in it before anything reads it (tiers.catalog).
        days = catalog.build(self.lake.store)
        if days:
            log.info("lake catalog: %d day(s) of data checked against the store", days)
        leftover = self.wal.leftover_segments()
        if leftover:
            log.info("recovering %d log segment(s) left by an earlier run", len(leftover))
        self.seal()
        if warm:
            self._warm_ring()
        self.unsealed.ring_knows_lake = warm
        self._recover_alerts(self.wal)

    def _recover_alerts(self, wal: WriteAheadLog) -> None:
        """Open excursions, lot context and undelivered alerts, from the lake and the log."""
        hidden = set(wal.segments())
        on_disk = [s for s in hidden if s != wal.active]
        tables = tables_from_records([r for s in on_disk for r in read_segment(wal.path(s))])
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
            key_ids = np.fromiter((self.keys.id_of(m, s) for m, s in zip(machines, sensors, strict=True)),
                                  dtype=np.int32, count=recent.num_rows)
            ts = recent.column("ts").cast("int64").to_numpy()
            with self._lock:
                self.ring.insert(key_ids, ts, recent.column("value").to_numpy())
            log.info("hot ring warmed with %d readings from the lake", recent.num_rows)

    def start(self, *, stop: threading.Event | None = None) -> None:
        """Open, then subscribe; returns once the broker confirmed the subscription.

        With `stop`, a broker that cannot be reached or refuses the login is tried again
        (with backoff, each failure logged) until it accepts or `stop` is set; the state stays
        RECOVERING (/health 503) meanwhile. Without it, start gives up after 10 s."""
        if self.wal is None:
            self.open()
        broker = self.settings.broker
        self.subscriber = Subscriber(
            url=broker.url, client_id=broker.client_id,
            topics=subscription_topics(broker.topic_root, broker.ctx_root, broker.share_group),
            on_message=self.ingestor.handle_message, username=broker.username,
            password=broker.password.reveal(), tls=broker_tls(broker), session_expiry=broker.session_expiry,
            keepalive=broker.keepalive, receive_maximum=broker.receive_maximum,
        )
        self.ingestor.start(open_sinks(self.settings))
        self.alerting.start()
        if not self.subscriber.start(timeout=None if stop is not None else 10.0, cancel=stop):
            return
        if self.status.state is State.RECOVERING:
            self.status.move(State.READY)

    def stop(self, *, seal: bool = True) -> None:
        """Stop taking messages, make everything taken durable and acknowledged, then seal."""
        if self.status.state in (State.STOPPED, State.CREATED):
            return
        failed = self.status.failed
        self.status.move(State.STOPPING)
        if self._ingestor is not None:
            self._ingestor.close()
            self._ingestor.join()
            if not failed:
                self._ingestor.commit_and_ack()
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
        self._release()
        self.status.move(State.STOPPED)

    def close_offline(self) -> None:
        """Release what `open()` took, for a pipeline that never subscribed."""
        if self.wal is not None:
            self.wal.close()
        self._release()
        self.status.move(State.STOPPED)

    def _release(self) -> None:
        if self.warm is not None:
            self.warm.close()
        if self._dir_lock is not None:
            self._dir_lock.release()

    def _acknowledge(self, tokens: list[int]) -> None:
        if self.subscriber is not None:
            self.subscriber.ack_many(tokens)

    def _seal_soon(self) -> None:
        """A seal now, beside ingestion (backpressure); the job runner keeps one at a time.
        Asked from the ingest and the committer threads at once: under a lock, and the thread
        started is the one this call made (two callers once started the same thread twice, and
        the ingest thread died of the RuntimeError)."""
        with self._early_seal_lock:
            if self._early_seal is not None and self._early_seal.is_alive():
                return
            early = threading.Thread(target=scheduler.run_scheduled, args=(self, "seal"),
                                     name="early-seal", daemon=True)
            self._early_seal = early
            early.start()

    def _ingest_figures(self) -> dict:
        ingestor = self.ingestor
        return {"inbox": ingestor.inbox_length, "acks_withheld": ingestor.acks_withheld,
                "sinks": {sink.destination.name: sink.stats.snapshot() for sink in ingestor.sinks}}

    # ---- what the API, the scheduler's jobs and the tests ask of a pipeline ---------------
    @property
    def state(self) -> State:
        return self.status.state

    @property
    def failure(self) -> str | None:
        return self.status.failure

    @property
    def ready(self) -> bool:
        return self.status.state is State.READY

    @property
    def sinks(self) -> list[SinkQueue]:
        return self._ingestor.sinks if self._ingestor is not None else []

    @property
    def seal_lock(self) -> threading.Lock:
        """Held by every job that writes or deletes this writer's lake files."""
        return self.sealer.seal_lock

    def hidden_segments(self) -> set[int]:
        """Log segments whose lake files readers must not see yet (their rows are in the log)."""
        return set(self.wal.segments()) if self.wal is not None else set()

    def process(self, messages: list[Message]) -> None:
        self.ingestor.process(messages)

    def seal(self) -> SealReport:
        return self.sealer.seal()

    def sql_sources(self, sql: str | None = None, *, timings: dict | None = None) -> SqlSources:
        return self.reads.sql_sources(sql, timings=timings)

    def tier_rows(self) -> list[TierRow]:
        return self.reads.tier_rows()

    def series(self, machine: str, sensor: str, *, since_ms: int, points: int,
               timings: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.reads.series(machine, sensor, since_ms=since_ms, points=points, timings=timings)

    def series_complete_from(self, machine: str, sensor: str) -> int:
        return self.reads.series_complete_from(machine, sensor)

    def bands(self, machine: str, *, since_ms: int, bucket_ms: int) -> tuple[list[dict], bool]:
        return self.reads.bands(machine, since_ms=since_ms, bucket_ms=bucket_ms)

    def sensors(self) -> list[tuple[str, str]]:
        return self.reads.sensors()

    def metrics_snapshot(self) -> dict:
        return self.reads.metrics_snapshot()
