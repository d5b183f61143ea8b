"""`fabtier bench cold`: how small the lake is and how fast DuckDB reads it, on simulator data.

The simulator's fab (`FabModel`, 100 Hz by default, timestamp jitter, values at each
sensor's resolution) is sealed into a local lake exactly as the pipeline does it (one
segment per `seal_every` of data), then compacted. Figures, all on the same readings:

- bytes per reading: the lake as sealed and as compacted; the same data as CSV
  (`machine,sensor,ts,value`, epoch ms, shortest decimal values), as Parquet with pyarrow's
  defaults, and as plain zstd Parquet with delta-encoded timestamps (DOUBLE values) — the
  same-run baselines;
- exactness: every value read back by DuckDB and by pyarrow equals the published double,
  bit for bit;
- DuckDB query times (median of `repeat` runs): a scan of everything and a one-hour
  one-machine query, through fabtier's `readings` view and through DuckDB's own Parquet
  reader over the lake's Hive layout, with the bytes that reader read (DuckDB's profiler)
  next to those read for the full scan and for the same query on the pyarrow-defaults files.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from analytics.session import SqlSources, run_sql
from fabtier.bench.harness import duckdb_profiled
from lifecycle.audit import AUDIT_SCHEMA
from tiers import compaction
from tiers import parquetformat as fmt
from tiers.cold import ColdLake
from tiers.store import LocalStore
from tiers.unsealed import CONTEXT_SCHEMA, QUARANTINE_SCHEMA, READINGS_SCHEMA, SegmentTables

HOUR_MS = 3_600_000
GORILLA_BYTES_PER_READING = 1.37

_T = TypeVar("_T")


class _Counter:
    """A write-only sink that counts bytes (CSV sizes without keeping the text)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.closed = False

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _blocks_table(blocks) -> pa.Table:
    if not blocks:
        return READINGS_SCHEMA.empty_table()
    machines = np.concatenate([np.full(len(b), b.machine, dtype=object) for b in blocks])
    sensors = np.concatenate([b.sensor for b in blocks])
    ts = np.concatenate([b.ts for b in blocks])
    value = np.concatenate([b.value for b in blocks])
    return pa.Table.from_arrays(
        [pa.array(machines, pa.string()), pa.array(sensors, pa.string()),
         pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")), pa.array(value, pa.float64())],
        schema=READINGS_SCHEMA)


def _timed(fn: Callable[[], _T], repeat: int) -> tuple[float, _T]:
    times: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run(*, seconds: float = 7200, machines: int = 3, sensors: int = 4, rate_hz: float = 100.0,
        jitter: float = 0.3, seal_every: float = 60.0, seed: int = 1, repeat: int = 3,
        workdir: Path | None = None) -> dict:
    from simulator import FabModel, SimConfig

    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="fabtier-bench-cold-")) if workdir is None else workdir
    try:
        start_ms = 1_764_000_000_000 - 1_764_000_000_000 % HOUR_MS
        end_ms = start_ms + int(seconds * 1000)
        model = FabModel(SimConfig(machines=machines, sensors_per_machine=sensors, rate_hz=rate_hz,
                                   jitter=jitter, seed=seed), start_ms)
        lake = ColdLake(LocalStore(root / "lake"), writer_id="bench")
        baseline_dir = root / "pyarrow-defaults"
        readings = csv_bytes = default_bytes = zstd_bytes = 0
        pending: dict[tuple[str, str], list[pa.Table]] = {}

        def flush_hour(day: str, hh: str) -> None:
            """The baselines of one hour: CSV size, pyarrow-defaults file, zstd+delta size."""
            nonlocal csv_bytes, default_bytes, zstd_bytes
            table = fmt.sort_dedup(pa.concat_tables(pending.pop((day, hh))))
            counter = _Counter()
            pacsv.write_csv(table.set_column(2, "ts", table.column("ts").cast(pa.int64())),
                            pa.PythonFile(counter, mode="w"), write_options=pacsv.WriteOptions(quoting_style="none"))
            csv_bytes += counter.bytes
            target = baseline_dir / f"date={day}" / f"hour={hh}" / "part.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, target)  # pyarrow's defaults
            default_bytes += target.stat().st_size
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd", use_dictionary=["machine", "sensor"],
                           column_encoding={"ts": "DELTA_BINARY_PACKED"})
            zstd_bytes += sink.getvalue().size

        segment, t = 0, start_ms
        while t < end_ms:
            t_next = min(t + int(seal_every * 1000), end_ms)
            blocks, _ = model.advance(t_next)
            table = _blocks_table(blocks)
            segment += 1
            readings += table.num_rows
            lake.write_segment(segment, SegmentTables(fresh=table, late=READINGS_SCHEMA.empty_table(),
                                                      quarantine=QUARANTINE_SCHEMA.empty_table(),
                                                      context=CONTEXT_SCHEMA.empty_table()), source="bench")
            for key, part in fmt.split_by_hour(table).items():
                pending.setdefault(key, []).append(part)
            for key in sorted(pending):
                if fmt.hour_bounds_ms(*key)[1] <= t_next:
                    flush_hour(*key)
            t = t_next
        for key in sorted(pending):
            flush_hour(*key)

        sealed_bytes = sum(size for _, size in lake.store.list("raw/"))
        sealed_files = len(lake.store.list("raw/"))
        plan = compaction.plan(lake.lake_files("raw"), writer="bench", hidden_segments=set(), now_ms=end_ms + 10 * HOUR_MS,
                               settle_ms=0, target_bytes=128 << 20)
        for task in plan.tasks:
            lake.compact(task)
            lake.delete_files(task.sources)
        lake_bytes = sum(size for _, size in lake.store.list("raw/"))
        lake_files = len(lake.store.list("raw/"))

        # Exactness, every row: the lake read by DuckDB's own reader, and by pyarrow (per hour),
        # against the pyarrow-defaults copy, which holds the published doubles as they were.
        import duckdb

        lake_glob, base_glob = f"{root}/lake/raw/**/*.parquet", f"{baseline_dir}/**/*.parquet"
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        duck_rows, duck_bad = con.execute(
            f"SELECT count(l.machine), count(*) FILTER (WHERE l.machine IS NULL OR b.machine IS NULL "
            f"OR l.value::DOUBLE IS DISTINCT FROM b.value) "
            f"FROM read_parquet('{lake_glob}', union_by_name = true) l FULL JOIN "
            f"read_parquet('{base_glob}', hive_partitioning = false) b USING (machine, sensor, ts)").fetchall()[0]
        arrow_bad = 0
        for hour_dir in sorted(baseline_dir.glob("date=*/hour=*")):
            day, hh = hour_dir.parent.name[5:], hour_dir.name[5:]
            mine = lake.read_raw(files=[f for f in lake.visible_files("raw") if (f.day, f.hour) == (day, hh)])
            con.register("mine", mine)
            arrow_bad += con.execute(
                f"SELECT count(*) FROM mine m FULL JOIN read_parquet('{hour_dir}/*.parquet', hive_partitioning = false) b "
                f"USING (machine, sensor, ts) WHERE m.machine IS NULL OR b.machine IS NULL "
                f"OR m.value IS DISTINCT FROM b.value").fetchall()[0][0]
            con.unregister("mine")
        con.close()
        duck_exact, arrow_exact, total_rows = duck_bad == 0, arrow_bad == 0, duck_rows
        value_types = sorted({str(pq.read_schema(p).field("value").type) for p in (root / "lake" / "raw").rglob("*.parquet")})

        # Queries
        machine = model.machines[0]
        q_from = start_ms + HOUR_MS if seconds * 1000 >= 2 * HOUR_MS else start_ms

        def iso(ms: int) -> str:
            return np.datetime64(ms, "ms").astype(str)

        where = f"machine = '{machine}' AND ts >= TIMESTAMP '{iso(q_from)}' AND ts < TIMESTAMP '{iso(q_from + HOUR_MS)}'"
        one_hour = f"SELECT count(*) AS n, avg(value) AS mean FROM readings WHERE {where}"
        full = ("SELECT machine, sensor, count(*) AS n, avg(value) AS mean, min(ts) AS first, max(ts) AS last "
                "FROM readings GROUP BY ALL ORDER BY ALL")

        def sources() -> SqlSources:
            return SqlSources(
                cold_raw=lake.raw_datasets(), cold_quarantine=lake.dataset("quarantine"),
                cold_context=lake.dataset("context"), hot_fresh=READINGS_SCHEMA.empty_table(),
                hot_late=READINGS_SCHEMA.empty_table(), hot_quarantine=QUARANTINE_SCHEMA.empty_table(),
                hot_context=CONTEXT_SCHEMA.empty_table(), audit=AUDIT_SCHEMA.empty_table())

        view_full_s, _ = _timed(lambda: run_sql(sources(), full), repeat)
        view_hour_s, view_hour = _timed(lambda: run_sql(sources(), one_hour), repeat)

        def native(base: Path, sql: str, partition_filter: bool) -> tuple[float, int, list]:
            """`sql` on DuckDB's own reader over a Hive layout; the hour's partition values
            added to the filter, as Athena users write it."""
            source = (f"(SELECT machine, sensor, ts::TIMESTAMP AS ts, value::DOUBLE AS value, date, hour FROM "
                      f"read_parquet('{base}/**/*.parquet', hive_partitioning = true, union_by_name = true))")
            sql = sql.replace("FROM readings", f"FROM {source}")
            if partition_filter:
                sql += f" AND date = '{iso(q_from)[:10]}' AND hour = '{int(q_from // HOUR_MS) % 24:02d}'"
            return duckdb_profiled(sql, repeat)

        native_full_s, native_full_read, _ = native(root / "lake" / "raw", full, False)
        native_hour_s, native_hour_read, native_hour = native(root / "lake" / "raw", one_hour, True)
        base_full_s, base_full_read, _ = native(baseline_dir, full, False)
        base_hour_s, base_hour_read, _ = native(baseline_dir, one_hour, True)
        # ... and with the time filter alone (no partition columns), as Athena-less engines see it
        ts_only_s, ts_only_read, _ = duckdb_profiled(one_hour.replace(
            "FROM readings", f"FROM (SELECT machine, ts::TIMESTAMP AS ts, value::DOUBLE AS value FROM "
            f"read_parquet('{root}/lake/raw/**/*.parquet', union_by_name = true))"), repeat)

        def per(size: int) -> float | None:
            return round(size / readings, 4) if readings else None

        return {
            "bench": "cold",
            "data": {"readings": readings, "machines": machines, "sensors_per_machine": sensors,
                     "rate_hz": rate_hz, "jitter": jitter, "simulated_seconds": seconds,
                     "seal_every_s": seal_every, "segments": segment},
            "bytes_per_reading": {
                "lake_compacted": per(lake_bytes), "lake_sealed": per(sealed_bytes),
                "csv": per(csv_bytes), "parquet_pyarrow_defaults": per(default_bytes),
                "parquet_zstd_delta_ts_double": per(zstd_bytes), "target_gorilla": GORILLA_BYTES_PER_READING,
            },
            "meets_target": readings > 0 and lake_bytes / readings <= GORILLA_BYTES_PER_READING,
            "files": {"sealed": sealed_files, "compacted": lake_files, "value_types": value_types},
            "exact": {"duckdb": duck_exact, "pyarrow": arrow_exact, "rows_read_back": total_rows,
                      "rows_expected": readings, "mismatches_duckdb": duck_bad, "mismatches_pyarrow": arrow_bad},
            "queries": {
                "one_hour_one_machine": {"machine": machine, "rows": view_hour.column("n")[0].as_py(),
                                         "same_answer_native": native_hour[0][0] == view_hour.column("n")[0].as_py()},
                "readings_view_full_scan_s": round(view_full_s, 4),
                "readings_view_one_hour_s": round(view_hour_s, 4),
                "duckdb_native_full_scan_s": round(native_full_s, 4),
                "duckdb_native_one_hour_s": round(native_hour_s, 4),
                "duckdb_native_full_scan_bytes_read": native_full_read,
                "duckdb_native_one_hour_bytes_read": native_hour_read,
                "duckdb_native_one_hour_fraction_of_lake": round(native_hour_read / lake_bytes, 4) if lake_bytes else None,
                "duckdb_native_one_hour_ts_filter_only_s": round(ts_only_s, 4),
                "duckdb_native_one_hour_ts_filter_only_bytes_read": ts_only_read,
                "baseline_pyarrow_defaults_full_scan_s": round(base_full_s, 4),
                "baseline_pyarrow_defaults_one_hour_s": round(base_hour_s, 4),
                "baseline_pyarrow_defaults_full_scan_bytes_read": base_full_read,
                "baseline_pyarrow_defaults_one_hour_bytes_read": base_hour_read,
            },
        }
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def render(result: dict) -> str:
    b, q, e = result["bytes_per_reading"], result["queries"], result["exact"]
    d = result["data"]
    lines = [
        f"cold lake benchmark: {d['readings']:,} readings ({d['machines']} machines x {d['sensors_per_machine']} sensors, "
        f"{d['rate_hz']:g} Hz, jitter {d['jitter']:g}, {d['simulated_seconds']:g} s simulated, sealed every "
        f"{d['seal_every_s']:g} s)",
        "bytes per reading:",
        f"  lake, compacted            {b['lake_compacted']:.3f}   (target {b['target_gorilla']}: "
        f"{'met' if result['meets_target'] else 'NOT met'})",
        f"  lake, as sealed            {b['lake_sealed']:.3f}   ({result['files']['sealed']} files -> "
        f"{result['files']['compacted']} after compaction)",
        f"  parquet zstd + delta ts    {b['parquet_zstd_delta_ts_double']:.3f}   (DOUBLE values)",
        f"  parquet, pyarrow defaults  {b['parquet_pyarrow_defaults']:.3f}",
        f"  csv                        {b['csv']:.3f}",
        f"value types in the lake: {', '.join(result['files']['value_types'])}; exact read-back: "
        f"duckdb {e['duckdb']}, pyarrow {e['pyarrow']} (every row compared with the published doubles; "
        f"{e['rows_read_back']:,} of {e['rows_expected']:,} rows read back)",
        "queries (median seconds):",
        f"  readings view: full scan {q['readings_view_full_scan_s']:.3f}, one hour one machine "
        f"{q['readings_view_one_hour_s']:.3f}",
        f"  duckdb on the lake: full scan {q['duckdb_native_full_scan_s']:.3f} "
        f"({q['duckdb_native_full_scan_bytes_read']:,} B read), one hour one machine "
        f"{q['duckdb_native_one_hour_s']:.3f} ({q['duckdb_native_one_hour_bytes_read']:,} B read, "
        f"{q['duckdb_native_one_hour_fraction_of_lake']:.1%} of the lake); by ts alone "
        f"{q['duckdb_native_one_hour_ts_filter_only_s']:.3f} ({q['duckdb_native_one_hour_ts_filter_only_bytes_read']:,} B)",
        f"  baseline, pyarrow defaults: full scan {q['baseline_pyarrow_defaults_full_scan_s']:.3f} "
        f"({q['baseline_pyarrow_defaults_full_scan_bytes_read']:,} B), one hour one machine "
        f"{q['baseline_pyarrow_defaults_one_hour_s']:.3f} ({q['baseline_pyarrow_defaults_one_hour_bytes_read']:,} B)",
    ]
    return "\n".join(lines)


def main(args) -> int:
    result = run(seconds=args.seconds, machines=args.machines, sensors=args.sensors, rate_hz=args.rate_hz,
                 jitter=args.jitter, seal_every=args.seal_every, seed=args.seed, repeat=args.repeat)
    print(render(result), flush=True)
    if args.json:
        print(json.dumps(result))
    return 0

