"""Serving reads of a running pipeline beside ingestion: SQL snapshots, hot series, tiers,
sensors and metrics. Each read takes the ingest lock only as long as it must copy (or not at
all: hot series read the ring lock-free)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import TypeVar

import numpy as np

from alerts.service import Alerting
from analytics.bounds import (
    hot_records_read,
    hot_ts_bounds,
    minute_bounds,
    reads_hot_readings,
    ts_bounds,
)
from analytics.session import SqlSources
from analytics.sources import tier_sources
from core.settings import Settings
from fabtier.runstate import Metrics, Status
from ingest.wal import WriteAheadLog, read_segment
from lifecycle.audit import AuditLog
from tiers import inventory
from tiers.cold import ColdLake
from tiers.hot import HotRing
from tiers.keys import SensorKeys
from tiers.unsealed import RECORD_KINDS, UnsealedData, merge_tables, tables_from_records
from tiers.warm import WarmStore

T = TypeVar("T")

# Lock-free tries of a series read before waiting for the ingest lock; a try fails only while
# the row is rewritten by a merge of out-of-order readings or the ring changes its layout.
_SERIES_ATTEMPTS = 20
_SERIES_RETRY_PAUSE_S = 50e-6  # lets the writer finish the numpy call it is in


class Reads:
    """The read side of one pipeline. `ingest_figures` gives the ingestor's live counters
    (inbox, withheld acknowledgements, sinks) for the metrics snapshot."""

    def __init__(self, *, settings: Settings, status: Status, metrics: Metrics, keys: SensorKeys,
                 ring: HotRing, unsealed: UnsealedData, wal: WriteAheadLog, lake: ColdLake, audit: AuditLog,
                 warm: WarmStore, alerting: Alerting, lock: AbstractContextManager,
                 ingest_figures: Callable[[], dict]) -> None:
        self.settings = settings
        self.status = status
        self.metrics = metrics
        self.keys = keys
        self.ring = ring
        self.unsealed = unsealed
        self.wal = wal
        self.lake = lake
        self.audit = audit
        self.warm = warm
        self.alerting = alerting
        self._lock = lock
        self._ingest_figures = ingest_figures

    def sql_sources(self, sql: str | None = None, *, timings: dict | None = None) -> SqlSources:
        """Every tier for one statement; given `sql`, only the lake's days its time range
        touches are listed (analytics.bounds), else the whole lake. `timings` gets the seconds
        spent waiting for the views' and the ingest lock (`lock`), holding the latter (`locked`),
        building the unsealed rows' view (`view`) and gathering the other tiers (`tiers`)."""
        bounds = ts_bounds(sql) if sql is not None else None  # before the lock: a parse
        minutes = minute_bounds(sql) if sql is not None else None
        hot_readings = sql is None or reads_hot_readings(sql)
        hot_bounds = hot_ts_bounds(sql, bounds) if sql is not None else None
        records = hot_records_read(sql) if sql is not None else RECORD_KINDS
        asked = time.perf_counter()
        with self.unsealed.view_lock:  # before the ingest lock (UnsealedData.tables)
            with self._lock:
                got = time.perf_counter()
                in_memory = self.unsealed.segments()
                on_disk = self.wal.segments()
                plan = self.unsealed.plan_view(in_memory, readings=hot_readings)
                released = time.perf_counter()
            # Built without the ingest lock: the ingest thread waited only for the plan.
            tables = self.unsealed.build_view(plan, ts_bounds=hot_bounds, lock=self._lock, records=records)
            built = time.perf_counter()
        # Segments that are only on disk: an earlier run's, whose sealing failed at start,
        # numbered below the active one. Not the one the ingest thread is opening: the log
        # rotates outside the ingest lock (`Ingestor._close_full_segment`), and its new file
        # is on disk (two fsyncs) before it is the active one. Taken for a leftover, it made
        # the statement read it and recast every unsealed row to plain strings (py-spy, at
        # 100,000 sensors with 5 statements a second: 49 samples in 12 s, the slowest answers).
        only_on_disk = [s for s in on_disk if s not in in_memory and s < self.wal.active]
        if only_on_disk:
            tables = merge_tables(tables, tables_from_records(
                [r for s in only_on_disk for r in read_segment(self.wal.path(s))]))
        sources = tier_sources(lake=self.lake, hidden=set(in_memory) | set(on_disk), unsealed=tables,
                               audit=self.audit.table(), warm=self.warm, data_dir=self.settings.data_dir,
                               recipe_limits=self.alerting.book.table(), ts_bounds=bounds,
                               minute_bounds=minutes)
        if timings is not None:
            timings.update(lock=got - asked, locked=released - got, view=built - released,
                           tiers=time.perf_counter() - built)
        return sources

    def tier_rows(self) -> list[inventory.TierRow]:
        """`fabtier tiers` for a running pipeline: the hot ring and unsealed log, then the stores."""
        with self._lock:
            hot = inventory.hot_ring_row(self.ring)
            segments = self.unsealed.segments()
        readings = self.unsealed.tables(segments, lock=self._lock).readings
        wal_bytes = sum(self.wal.path(s).stat().st_size for s in self.wal.segments()
                        if self.wal.path(s).exists())
        return [hot, inventory.unsealed_row(readings, wal_bytes),
                *inventory.stored_rows(self.lake.store, self.settings.store_url, self.warm.stats())]

    def series_complete_from(self, machine: str, sensor: str) -> int:
        """Epoch ms from which the hot ring holds every reading of the sensor (one number read
        without the lock: it only moves forward)."""
        key = self.keys.lookup(machine, sensor)
        return self.ring.covered_from(key) if key is not None else self.ring.default_covered_from

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
        found: tuple[np.ndarray, np.ndarray]
        if key is None:
            found = np.empty(0, np.int64), np.empty(0, np.float64)
            waited: float | None = None
        else:
            found, waited = self._read_ring(lambda: self.ring.read_series(key, since=since_ms, points=points))
        done = time.perf_counter()
        if timings is not None:
            timings["wait_us"] = round((waited or 0.0) * 1e6, 1)
            timings["query_us"] = round((done - began) * 1e6, 1)
            timings["fell_back"] = waited is not None
            timings["gil_wait_us"] = round((began - asked) * 1e6, 1)
        return found

    def _read_ring(self, read: Callable[[], T | None]) -> tuple[T, float | None]:
        """`read()`, a lock-free read of the hot ring, until it answers: tried again a few
        times while its row is rewritten, then once under the ingest lock. The answer, and the
        seconds waited for the lock (None: it did not wait)."""
        for attempt in range(_SERIES_ATTEMPTS):
            if attempt:
                time.sleep(_SERIES_RETRY_PAUSE_S)
            found = read()
            if found is not None:
                return found, None
        asked = time.perf_counter()
        with self._lock:
            waited = time.perf_counter() - asked
            found = read()
        if found is None:
            raise RuntimeError("the hot ring changed during a read under the writers' lock")
        return found, waited

    def bands(self, machine: str, *, since_ms: int, bucket_ms: int) -> tuple[list[dict], bool]:
        """Each of `machine`'s sensors since `since_ms` from the hot ring, as buckets of
        `bucket_ms` (rows of sensor, t, mn, mx, av, n: the dashboard's SQL), read without the
        ingest lock as `series` is; and whether the ring holds every reading of every one of
        them since `since_ms` (else the answer may leave some out: ask SQL)."""
        time.sleep(0)  # as in `series`: start the reads on a fresh switch interval
        rows: list[dict] = []
        sensors = self.keys.of_machine(machine)
        complete = bool(sensors)
        for sensor, key in sensors:
            complete = complete and self.ring.covered_from(key) <= since_ms
            found, _ = self._read_ring(functools.partial(self.ring.read_bands, key, since=since_ms,
                                                         bucket_ms=bucket_ms))
            t, mn, mx, av, n = (column.tolist() for column in found)
            rows.extend({"sensor": sensor, "t": a, "mn": b, "mx": c, "av": d, "n": e}
                        for a, b, c, d, e in zip(t, mn, mx, av, n, strict=True))
        return rows, complete

    def sensors(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(zip(self.keys.machines, self.keys.sensors, strict=True))

    def metrics_snapshot(self) -> dict:
        with self._lock:
            unsealed_rows = self.unsealed.rows
        # Without the ingest lock, as the ring's other readers: a sum over every sensor's row
        # (0.1 ms at 100,000 sensors, 1 ms at a million) that the ingest thread waited for at
        # every poll. A gauge read during a re-layout may be off for that moment.
        ring_rows = len(self.ring)
        return {**asdict(self.metrics), "state": self.status.state.value, "unsealed_rows": unsealed_rows,
                **self._ingest_figures(), "hot_ring_rows": ring_rows, "wal_segment": self.wal.active,
                "alerts": self.alerting.metrics()}
