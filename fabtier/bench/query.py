"""`fabtier bench query`: does the cost of a narrow question grow with the lake or with the answer?

Lakes of 1, 7 and 30 simulated days (by default; many hour partitions at a low rate) are
written through the cold tier's own writer (`ColdLake.write_segment`, one segment per
`seal_every`), the last hour ending now. On each lake the same questions:

- one hour of one machine (`ts` between two TIMESTAMP literals, `machine = ...`);
- the last 5 minutes of one sensor (`ts >= now() - INTERVAL 5 MINUTE`, and `now()::TIMESTAMP`);
- a day of one sensor per minute (`readings_1m`, yesterday; the lake's aggregate files, and a
  warm store holding the last two hours, as a running pipeline has);

each through fabtier's session (the views over sources gathered as the pipeline's reader
gathers them, `analytics.sources.tier_sources`: listing, visible files, datasets, the warm
snapshot, the trails; median of `repeat` runs) and through DuckDB's own Parquet reader given
only the files that hold the answer (the floor: one connection kept open, as fabtier keeps its
sessions, a first run not counted, no profiler while timed; `floor_fresh_s`: a new connection
a run, the cost of a one-off `duckdb` call). Run by run, a question takes its turn on every
lake, fabtier then the floor, so that all of them meet the same moments of a noisy machine;
every lake is built (and synced to disk) before any is timed.
Bytes read: for the floor, DuckDB's profiler (a run of its own); for fabtier, counted by a file
system wrapper under the lake (files opened, bytes read) on the path an object store's lake
takes (pyarrow); a lake on local disk is read by DuckDB itself (analytics.session), which
gets the same files (`fabtier_files_given`).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from alerts.recipes import RECIPE_LIMITS_SCHEMA
from analytics.bounds import minute_bounds, ts_bounds
from analytics.session import SqlSources, run_sql
from analytics.sources import tier_sources
from fabtier.bench.harness import duckdb_profiled
from lifecycle.audit import AuditLog
from lifecycle.warmjobs import agg_key
from tiers import catalog
from tiers.catalog import CatalogedStore
from tiers.cold import ColdLake
from tiers.parquetformat import hour_bounds_ms, split_by_day, to_parquet_bytes
from tiers.store import LocalStore
from tiers.unsealed import (
    CONTEXT_SCHEMA,
    QUARANTINE_SCHEMA,
    READINGS_SCHEMA,
    SegmentTables,
    tables_from_records,
)
from tiers.warm import MINUTES_SCHEMA, WarmStore

_NOTHING_UNSEALED = tables_from_records([])
# The minutes a running pipeline keeps in its warm store before they age out to the lake.
WARM_HOURS = 2

HOUR_MS = 3_600_000


class _CountingFile:
    """A read-only file object that adds what it reads to its handler's count."""

    def __init__(self, path: str, handler: CountingHandler) -> None:
        self._file = open(path, "rb")
        self._handler = handler
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n)
        self._handler.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self._file.close()

    def size(self) -> int:
        here = self._file.tell()
        end = self._file.seek(0, 2)
        self._file.seek(here)
        return end


class CountingHandler(pafs.FileSystemHandler):
    """A local file system that records the files opened for reading and the bytes read."""

    def __init__(self) -> None:
        self._fs = pafs.LocalFileSystem()
        self.opened: list[str] = []
        self.bytes_read = 0

    def reset(self) -> None:
        self.opened, self.bytes_read = [], 0

    def __eq__(self, other) -> bool:
        return other is self

    def __ne__(self, other) -> bool:
        return other is not self

    __hash__ = object.__hash__

    def get_type_name(self) -> str:
        return "counting-local"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self._fs.delete_file(path)

    def move(self, src, dest):
        self._fs.move(src, dest)

    def copy_file(self, src, dest):
        self._fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.open_input_file(path)

    def open_input_file(self, path):
        self.opened.append(path)
        return pa.PythonFile(_CountingFile(path, self), mode="r")

    def open_output_stream(self, path, metadata):
        return self._fs.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        return self._fs.open_append_stream(path)


class CountingStore(LocalStore):
    """A local store whose Arrow file system (what the lake's datasets read) counts."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.counter = CountingHandler()

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.PyFileSystem(self.counter), str(self.root)


def _iso(ms: int) -> str:
    return str(np.datetime64(ms, "ms").astype(str))


def build_lake(root: Path, *, days: float, machines: int, sensors: int, rate_hz: float,
               seal_every_s: float, end_ms: int, seed: int = 1) -> tuple[ColdLake, int, int]:
    """A lake of `days` of readings ending at `end_ms`; (lake, start_ms, readings)."""
    start_ms = int(end_ms - days * 24 * HOUR_MS)
    start_ms -= start_ms % HOUR_MS
    rng = np.random.default_rng(seed)
    store = CatalogedStore(LocalStore(root))
    store.build()  # an empty catalog, kept from the first seal on as a pipeline keeps it
    lake = ColdLake(store, writer_id="bench")
    period = int(1000 / rate_hz)
    names = [(f"m{m + 1:02d}", f"s{s + 1:02d}") for m in range(machines) for s in range(sensors)]
    step = int(seal_every_s * 1000)
    total, segment, t = 0, 0, start_ms
    while t < end_ms:
        t_next = min(t + step, end_ms)
        ticks = np.arange(t - t % period + (period if t % period else 0), t_next, period, dtype=np.int64)
        if len(ticks):
            n = len(ticks)
            machine_col = np.repeat([m for m, _ in names], n)
            sensor_col = np.repeat([s for _, s in names], n)
            ts = np.tile(ticks, len(names))
            value = np.round(20 + rng.normal(0, 1, n * len(names)), 2)
            table = pa.Table.from_arrays(
                [pa.array(machine_col, pa.string()), pa.array(sensor_col, pa.string()),
                 pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")), pa.array(value, pa.float64())],
                schema=READINGS_SCHEMA)
            segment += 1
            total += table.num_rows
            lake.write_segment(segment, SegmentTables(
                fresh=table, late=READINGS_SCHEMA.empty_table(), quarantine=QUARANTINE_SCHEMA.empty_table(),
                context=CONTEXT_SCHEMA.empty_table()), source="bench")
        t = t_next
    _write_minutes(store, root, lake, warm_from_ms=end_ms - WARM_HOURS * HOUR_MS)
    return lake, start_ms, total


def _write_minutes(store: CatalogedStore, root: Path, lake: ColdLake, *, warm_from_ms: int) -> None:
    """The lake's per-minute aggregates (`agg_1m/`, one file a day, as age-out writes them),
    computed by DuckDB from the raw files just written; those from `warm_from_ms` on are in the
    warm store too (a running pipeline's recent minutes, before they age out)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    minutes = con.sql(
        f"SELECT machine, sensor, date_trunc('minute', ts::TIMESTAMP) AS minute, count(*) AS n, min(value) AS \"min\", "
        f"max(value) AS \"max\", avg(value) AS \"avg\", arg_min(value, ts) AS \"first\", "
        f"arg_max(value, ts) AS \"last\" FROM read_parquet('{root}/raw/**/*.parquet', union_by_name = true) "
        f"GROUP BY ALL ORDER BY machine, sensor, minute").to_arrow_table()
    con.close()
    minutes = minutes.set_column(2, "minute", minutes.column("minute").cast(pa.timestamp("ms")).cast(
        pa.timestamp("ms", tz="UTC"))).cast(MINUTES_SCHEMA)
    for day, part in split_by_day(minutes, "minute").items():
        store.put(agg_key(day, "bench"), to_parquet_bytes(part))
    store.flush()
    recent = minutes.filter(pc.greater_equal(minutes.column("minute").cast(pa.int64()), warm_from_ms))
    warm = warm_store(lake)
    try:
        warm.upsert(recent)
    finally:
        warm.close()


def _data_dir(lake: ColdLake) -> Path:
    """The data directory beside a bench lake (its trails: audit, job runs, acknowledgements;
    and its warm store), as a pipeline has one beside its lake."""
    base = catalog.unwrap(lake.store)
    assert isinstance(base, LocalStore), "a bench lake is on local disk"
    path = Path(base.root).with_name(Path(base.root).name + "-data")
    path.mkdir(exist_ok=True)
    return path


def warm_store(lake: ColdLake) -> WarmStore:
    """The bench lake's warm store (filled by `build_lake`)."""
    return WarmStore(_data_dir(lake) / "warm" / "warm.duckdb")


def _sources(lake: ColdLake, sql: str | None = None, *, warm: WarmStore | None = None) -> SqlSources:
    """What the pipeline's reader gathers for `sql` (analytics.sources.tier_sources: the
    statement's bounds, the lake's days they touch, the visible files, the warm store's
    snapshot, the trails), with nothing unsealed."""
    data_dir = _data_dir(lake)
    return tier_sources(lake=lake, hidden=set(), unsealed=_NOTHING_UNSEALED,
                        audit=AuditLog(data_dir / "audit" / "moves.jsonl").table(), warm=warm,
                        data_dir=data_dir, recipe_limits=RECIPE_LIMITS_SCHEMA.empty_table(),
                        ts_bounds=ts_bounds(sql) if sql is not None else None,
                        minute_bounds=minute_bounds(sql) if sql is not None else None)


def _files_given(sources: SqlSources, view: str) -> int:
    """How many files the sources hand to the scan of `view` (before the scan's own pruning)."""
    parts = sources.cold_raw if view == "readings" else sources.cold_agg_1m
    parts = [parts] if not isinstance(parts, list | tuple) else parts
    return sum(len(p.files) for p in parts if isinstance(p, ds.FileSystemDataset))


def _floor_sql(files: list[str], where: str, select: str) -> str:
    """The question on DuckDB's own reader over `files` only."""
    listed = ", ".join(f"'{f}'" for f in files)
    source = (f"(SELECT machine, sensor, ts::TIMESTAMP AS ts, value::DOUBLE AS value "
              f"FROM read_parquet([{listed}], union_by_name = true))")
    return f"SELECT {select} FROM {source} WHERE {where}"


def _timed(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _hour_files(lake: ColdLake, lo_ms: int, hi_ms: int) -> list[str]:
    """Paths of the visible raw files of the hours overlapping [lo_ms, hi_ms)."""
    base = catalog.unwrap(lake.store)
    assert isinstance(base, LocalStore)
    root = str(base.root)
    return [f"{root}/{f.key}" for f in lake.visible_files("raw")
            if f.hour is not None and hour_bounds_ms(f.day, f.hour)[0] < hi_ms
            and hour_bounds_ms(f.day, f.hour)[1] > lo_ms]


def _day_files(lake: ColdLake, kind: str, lo_ms: int, hi_ms: int) -> list[str]:
    """Paths of the `kind` files (one a day) of the days overlapping [lo_ms, hi_ms)."""
    base = catalog.unwrap(lake.store)
    assert isinstance(base, LocalStore)
    days = {str(np.datetime64(ms, "ms").astype("datetime64[D]")) for ms in range(lo_ms - lo_ms % (24 * HOUR_MS), hi_ms, 24 * HOUR_MS)}
    return [f"{base.root}/{k}" for k, _ in base.list(f"{kind}/") if k.split("/")[1][len("date="):] in days]


def _questions(start_ms: int, end_ms: int) -> dict[str, tuple[str, str, str, tuple[int, int] | None]]:
    """name -> (view, select list, where clause, the time span it reads; None: relative to now())."""
    hour_from = end_ms - end_ms % HOUR_MS - 2 * HOUR_MS  # a whole hour, the same distance from the end
    day_from = end_ms - end_ms % (24 * HOUR_MS) - 24 * HOUR_MS  # yesterday, whole
    if day_from < start_ms:  # a lake younger than that: its own first day
        day_from = start_ms - start_ms % (24 * HOUR_MS)
    return {
        "one_hour_one_machine": (
            "readings", "count(*) AS n, avg(value) AS mean",
            f"machine = 'm01' AND ts >= TIMESTAMP '{_iso(hour_from)}' AND ts < TIMESTAMP '{_iso(hour_from + HOUR_MS)}'",
            (hour_from, hour_from + HOUR_MS)),
        "last_5_minutes_of_a_sensor": (
            "readings", "count(*) AS n, max(value) AS peak",
            "machine = 'm01' AND sensor = 's01' AND ts >= now() - INTERVAL 5 MINUTE",
            None),
        # now() is a TIMESTAMPTZ: compared with it, DuckDB casts the column and keeps the filter.
        "last_5_minutes_now_as_timestamp": (
            "readings", "count(*) AS n, max(value) AS peak",
            "machine = 'm01' AND sensor = 's01' AND ts >= now()::TIMESTAMP - INTERVAL 5 MINUTE",
            None),
        "a_day_of_a_sensor_per_minute": (
            "readings_1m", "count(*) AS n, avg(\"avg\") AS mean",
            f"machine = 'm01' AND sensor = 's01' AND minute >= TIMESTAMP '{_iso(day_from)}' "
            f"AND minute < TIMESTAMP '{_iso(day_from + 24 * HOUR_MS)}'",
            (day_from, day_from + 24 * HOUR_MS)),
    }


class _OpenLake:
    """A built lake opened for measuring: as the pipeline reads it, through a counting file
    system (bytes read), and its warm store."""

    def __init__(self, root: Path, start_ms: int) -> None:
        self.start_ms = start_ms
        self.lake = ColdLake(CatalogedStore(LocalStore(root)), writer_id="bench")
        self.counting_store = CountingStore(root)
        self.counted = ColdLake(CatalogedStore(self.counting_store), writer_id="bench")
        self.warm = warm_store(self.lake)

    def fabtier(self, sql: str) -> pa.Table:
        return run_sql(_sources(self.lake, sql, warm=self.warm), sql)


class _Asked:
    """One question on one lake, through fabtier and through the floor (DuckDB alone over the
    files that hold the answer, on a connection kept open)."""

    def __init__(self, lake: _OpenLake, view: str, select: str, where: str, span: tuple[int, int] | None) -> None:
        import duckdb

        self.lake, self.view = lake, view
        self.sql = f"SELECT {select} FROM {view} WHERE {where}"
        self.moving = span is None  # relative to now(): the window moves on between runs
        if span is None:
            now_ms = int(time.time() * 1000)
            span = (now_ms - 5 * 60_000, now_ms + 1)
        if view == "readings":
            self.files = _hour_files(lake.lake, *span)
            self.floor_sql: str | None = _floor_sql(self.files, where, select)
        else:  # a lake younger than a day has no yesterday: nothing to read
            self.files = _day_files(lake.lake, "agg_1m", *span)
            self.floor_sql = (f"SELECT {select} FROM (SELECT * REPLACE (minute::TIMESTAMP AS minute) FROM "
                              f"read_parquet([{', '.join(repr(f) for f in self.files)}])) WHERE {where}"
                              ) if self.files else None
        self.answer = lake.fabtier(self.sql)  # the first runs open what the next ones reuse
        self.con = duckdb.connect() if self.floor_sql is not None else None
        if self.con is not None and self.floor_sql is not None:
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute(self.floor_sql).fetchall()
        self.mine: list[float] = []
        self.theirs: list[float] = []

    def once(self) -> None:
        took, self.answer = _timed(lambda: self.lake.fabtier(self.sql))
        self.mine.append(took)
        if self.con is not None and self.floor_sql is not None:
            floor_sql, con = self.floor_sql, self.con
            self.theirs.append(_timed(lambda: con.execute(floor_sql).fetchall())[0])

    def result(self, repeat: int) -> dict:
        """The figures, once every run is done: medians; the floor on a new connection a run
        and its bytes (DuckDB's profiler, a run of its own: its output costs ~1 ms a query);
        what fabtier opens as an object store's lake would."""
        import duckdb

        floor_s = statistics.median(self.theirs) if self.theirs else 0.0
        fresh_s, floor_read, floor_rows = 0.0, 0, [(0, None)]
        if self.con is not None and self.floor_sql is not None:
            self.con.close()
            floor_sql = self.floor_sql

            def fresh():
                c = duckdb.connect()
                c.execute("SET TimeZone = 'UTC'")
                took = _timed(lambda: c.execute(floor_sql).fetchall())[0]
                c.close()
                return took

            fresh_s = statistics.median(fresh() for _ in range(repeat))
            _, floor_read, floor_rows = duckdb_profiled(floor_sql, 1)
        lake = self.lake
        given = _files_given(_sources(lake.lake, self.sql, warm=lake.warm), self.view)
        lake.counting_store.counter.reset()
        run_sql(_sources(lake.counted, self.sql, warm=lake.warm), self.sql)
        n = self.answer.column("n")[0].as_py()
        if self.moving:
            # No reading arrives meanwhile, so the count only falls as now() moves on: the
            # floor's, taken after fabtier's last timed run, lies between that and the next.
            after = lake.fabtier(self.sql).column("n")[0].as_py()
            same = after <= floor_rows[0][0] <= n
        else:
            same = floor_rows[0][0] == n
        view_s = statistics.median(self.mine)
        return {
            "sql": self.sql, "rows": n, "same_answer": same,
            "fabtier_s": round(view_s, 4), "fabtier_files_opened": len(set(lake.counting_store.counter.opened)),
            "fabtier_bytes_read": lake.counting_store.counter.bytes_read,
            "fabtier_files_given": given,
            "floor_s": round(floor_s, 4), "floor_fresh_s": round(fresh_s, 4), "floor_files": len(self.files),
            "floor_bytes_read": floor_read,
            "ratio_to_floor": round(view_s / floor_s, 2) if floor_s else None,
        }


def measure(lakes: list[_OpenLake], *, end_ms: int, repeat: int) -> list[dict]:
    """Every question on every lake, through fabtier and through the floor, per lake. Run by
    run, each question takes its turn on every lake, fabtier then the floor: all of them meet
    the same moments of a noisy machine, so the lakes' times and the floor compare."""
    out: list[dict] = [{} for _ in lakes]
    questions = [_questions(lk.start_ms, end_ms) for lk in lakes]
    for name in questions[0] if lakes else ():
        asked = [_Asked(lk, *asks[name]) for lk, asks in zip(lakes, questions, strict=True)]
        for _ in range(repeat):
            for question in asked:
                question.once()
        for figures, question in zip(out, asked, strict=True):
            figures[name] = question.result(repeat)
    return out


def run(*, days: list[float], machines: int = 3, sensors: int = 4, rate_hz: float = 0.05,
        seal_every_s: float = 1800.0, repeat: int = 5, seed: int = 1, workdir: Path | None = None) -> dict:
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="fabtier-bench-query-")) if workdir is None else workdir
    try:
        end_ms = int(time.time() * 1000)
        lakes: list[dict[str, Any]] = []
        built = []
        for d in days:  # every lake first: a lake being written makes the machine noisy
            lake_root = root / f"lake-{d:g}d"
            t0 = time.perf_counter()
            lake, start_ms, readings = build_lake(lake_root, days=d, machines=machines, sensors=sensors,
                                                  rate_hz=rate_hz, seal_every_s=seal_every_s,
                                                  end_ms=end_ms, seed=seed)
            built.append((d, lake_root, lake, start_ms, readings, time.perf_counter() - t0))
        os.sync()  # the lakes' pages on disk before anything is timed
        opened = [_OpenLake(lake_root, start_ms) for _, lake_root, _, start_ms, _, _ in built]
        try:
            figures = measure(opened, end_ms=end_ms, repeat=repeat)
        finally:
            for lk in opened:
                lk.warm.close()
        for (d, _, lake, _, readings, built_s), queries in zip(built, figures, strict=True):
            files = lake.lake_files("raw")
            lakes.append({"days": d, "readings": readings, "files": len(files),
                          "hours": len({f.partition for f in files}), "bytes": sum(f.size for f in files),
                          "build_s": round(built_s, 2), "queries": queries})
        summary = {}
        for q in lakes[0]["queries"] if lakes else ():
            times = [lk["queries"][q]["fabtier_s"] for lk in lakes]
            summary[q] = {"largest_over_smallest": round(times[-1] / times[0], 2) if times[0] else None,
                          "worst_ratio_to_floor": max(lk["queries"][q]["ratio_to_floor"] or 0 for lk in lakes)}
        return {"bench": "query", "data": {"machines": machines, "sensors_per_machine": sensors,
                                           "rate_hz": rate_hz, "seal_every_s": seal_every_s, "repeat": repeat},
                "lakes": lakes, "summary": summary,
                "targets": {"flat_within": 1.5, "of_floor_within": 3.0}}
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def render(result: dict) -> str:
    d = result["data"]
    lines = [f"query benchmark: {d['machines']} machines x {d['sensors_per_machine']} sensors at {d['rate_hz']:g} Hz, "
             f"sealed every {d['seal_every_s']:g} s; median of {d['repeat']} runs",
             "fabtier: given = files handed to the scan; opened/bytes as pyarrow reads them (an object store's lake); "
             "floor: one open connection, fresh = a new one a run",
             f"{'lake':>6} {'files':>6} {'question':<32} {'rows':>6} {'fabtier s':>10} {'given':>6} {'opened':>7} "
             f"{'bytes':>10} {'floor s':>8} {'fresh s':>8} {'files':>6} {'bytes':>10} {'x floor':>8}"]
    for lk in result["lakes"]:
        for name, q in lk["queries"].items():
            lines.append(f"{lk['days']:>5g}d {lk['files']:>6} {name:<32} {q['rows']:>6} {q['fabtier_s']:>10.4f} "
                         f"{q['fabtier_files_given']:>6} {q['fabtier_files_opened']:>7} {q['fabtier_bytes_read']:>10,} "
                         f"{q['floor_s']:>8.4f} {q['floor_fresh_s']:>8.4f} "
                         f"{q['floor_files']:>6} {q['floor_bytes_read']:>10,} {q['ratio_to_floor'] or 0:>8.2f}"
                         + ("" if q["same_answer"] else "  ANSWERS DIFFER"))
    for name, s in result["summary"].items():
        lines.append(f"{name}: largest lake / smallest {s['largest_over_smallest']}x "
                     f"(target <= {result['targets']['flat_within']}), worst x floor {s['worst_ratio_to_floor']} "
                     f"(target <= {result['targets']['of_floor_within']})")
    return "\n".join(lines)


def main(*, days: list[float], repeat: int, seed: int, as_json: bool, machines: int = 3, sensors: int = 4,
         rate_hz: float = 0.05, seal_every_s: float = 1800.0) -> int:
    result = run(days=days, machines=machines, sensors=sensors, rate_hz=rate_hz, seal_every_s=seal_every_s,
                 repeat=repeat, seed=seed)
    print(render(result), flush=True)
    if as_json:
        print(json.dumps(result))
    return 0
