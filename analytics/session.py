"""A sandboxed DuckDB session over the tiers (CONTRACT.md section 4).

Every source is handed to DuckDB as an Arrow object before the session is locked: after
that, no statement can reach the file system, the network or an extension, and only one
SELECT (or EXPLAIN) per call is accepted. Each query gets a fresh in-memory session, so a
query sees one consistent snapshot and can change nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from alerts.recipes import RECIPE_LIMITS_SCHEMA
from analytics.leftout import ArchivedObject
from core.errors import SqlError
from tiers.parquetformat import hour_bounds_ms
from tiers.unsealed import ALERTS_SCHEMA

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}

_VIEWS = """
CREATE VIEW late_new AS
  SELECT machine, sensor, ts, value FROM hot_late l
  WHERE NOT EXISTS (SELECT 1 FROM hot_fresh f
                    WHERE f.machine = l.machine AND f.sensor = l.sensor AND f.ts = l.ts)
    AND NOT EXISTS (SELECT 1 FROM cold_raw c
                    WHERE c.ts BETWEEN {late_from} AND {late_to}
                      AND c.machine = l.machine AND c.sensor = l.sensor AND c.ts = l.ts::TIMESTAMP)
  QUALIFY row_number() OVER (PARTITION BY machine, sensor, ts) = 1;
CREATE VIEW readings AS
  -- cold_raw's ts is a TIMESTAMP already (_NaiveTsDataset): no cast, so filters reach the scan.
  SELECT machine, sensor, ts, value FROM cold_raw
  UNION ALL SELECT machine, sensor, ts::TIMESTAMP AS ts, value FROM hot_fresh
  UNION ALL SELECT machine, sensor, ts::TIMESTAMP AS ts, value FROM late_new;
CREATE VIEW quarantine AS
  SELECT received_at::TIMESTAMP AS received_at, topic, reason, payload FROM cold_quarantine
  UNION ALL SELECT received_at::TIMESTAMP, topic, reason, payload FROM hot_quarantine;
CREATE VIEW lot_events AS
  SELECT ts::TIMESTAMP AS ts, machine, event, lot, wafer, recipe, recipe_version FROM cold_context
  UNION ALL SELECT ts::TIMESTAMP, machine, event, lot, wafer, recipe, recipe_version FROM hot_context;
CREATE VIEW lot_runs AS
  SELECT machine, lot, wafer, recipe, recipe_version,
         ts AS start_ts, next_ts AS end_ts
  FROM (SELECT *, lead(ts) OVER (PARTITION BY machine ORDER BY ts, event DESC) AS next_ts
        FROM lot_events)
  WHERE event = 'start';
CREATE VIEW alerts AS
  -- No note is NULL, as in the payload; files written before that stored ''.
  SELECT machine, sensor, ts::TIMESTAMP AS ts, value, kind, threshold, rule, state,
         raised_at::TIMESTAMP AS raised_at, writer || ':' || seq AS id, flapping,
         nullif(note, '') AS note, lot, wafer, recipe, recipe_version, step, seq::BIGINT AS seq
  FROM (SELECT * FROM cold_alerts UNION ALL SELECT * FROM hot_alerts);
CREATE VIEW recipe_limits AS
  SELECT recipe, version, effective::TIMESTAMP AS effective, step_no, step, step_start_s,
         step_end_s, settle_s, kind, setpoint, tolerance, low, high FROM recipe_limits_source;
CREATE VIEW tier_moves AS
  SELECT "at"::TIMESTAMP AS "at", job, what, source, target, rows, bytes, checksum FROM audit;
CREATE VIEW readings_1m AS
  SELECT machine, sensor, minute::TIMESTAMP AS minute, n, "min", "max", "avg", "first", "last"
  FROM warm_1m
  UNION ALL
  -- A minute recomputed after it was aged out (late data) is in both: the warm row is newer.
  SELECT machine, sensor, minute::TIMESTAMP, n, "min", "max", "avg", "first", "last"
  FROM cold_agg_1m a
  WHERE NOT EXISTS (SELECT 1 FROM warm_1m w
                    WHERE w.machine = a.machine AND w.sensor = a.sensor AND w.minute = a.minute);
CREATE VIEW readings_1h AS
  SELECT machine, sensor, date_trunc('hour', minute) AS hour, sum(n)::BIGINT AS n,
         min("min") AS "min", max("max") AS "max", sum("avg" * n) / sum(n) AS "avg",
         arg_min("first", minute) AS "first", arg_max("last", minute) AS "last"
  FROM readings_1m GROUP BY ALL;
CREATE VIEW job_runs AS
  SELECT job, "trigger", outcome, started_at::TIMESTAMP AS started_at,
         finished_at::TIMESTAMP AS finished_at, as_of::TIMESTAMP AS as_of, missed, detail
  FROM job_history;
"""


@dataclass(frozen=True)
class SqlSources:
    """A consistent snapshot of every tier, as Arrow objects.

    `cold_raw` may be one dataset or several (the lake has one per value encoding: DOUBLE
    or DECIMAL(18, s)); DuckDB unites them and casts `value` to DOUBLE, exactly."""

    cold_raw: ds.Dataset | Sequence[ds.Dataset]
    cold_quarantine: ds.Dataset
    cold_context: ds.Dataset
    hot_fresh: pa.Table
    hot_late: pa.Table
    hot_quarantine: pa.Table
    hot_context: pa.Table
    audit: pa.Table
    cold_alerts: ds.Dataset | None = None
    hot_alerts: pa.Table | None = None
    recipe_limits: pa.Table | None = None
    # The warm tier (issue 5): minutes in the warm store, minutes aged out to the lake, and
    # the history of tiering job runs. None: empty.
    warm_1m: pa.Table | None = None
    cold_agg_1m: ds.Dataset | pa.Table | None = None
    job_history: pa.Table | None = None
    # Raw lake objects a reader would read but cannot (archived, not restored): what an
    # answer over `readings` leaves out (analytics.leftout).
    archived_raw: Sequence[ArchivedObject] = ()


def _empty_defaults(sources: SqlSources) -> dict[str, object]:
    from lifecycle.runs import RUNS_SCHEMA
    from tiers.warm import MINUTES_SCHEMA
    return {
        "warm_1m": sources.warm_1m if sources.warm_1m is not None else MINUTES_SCHEMA.empty_table(),
        "cold_agg_1m": sources.cold_agg_1m if sources.cold_agg_1m is not None else MINUTES_SCHEMA.empty_table(),
        "job_history": sources.job_history if sources.job_history is not None else RUNS_SCHEMA.empty_table(),
    }


def _ts_literal(table: pa.Table, fn: str) -> str:
    if table.num_rows == 0:
        return "NULL"
    value = getattr(pc, fn)(table.column("ts")).cast(pa.int64()).as_py()
    return f"make_timestamp({int(value) * 1000})"  # cold_raw's ts is a TIMESTAMP (UTC)


_NAIVE_TS = pa.timestamp("us")
_HOUR_KEY = re.compile(r"raw/date=(?P<day>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/[^/]+$")


class _NaiveTsDataset(ds.InMemoryDataset):
    """A lake dataset as DuckDB sees it: `ts` a plain TIMESTAMP (microseconds, UTC wall
    time), so that the `readings` view needs no cast and DuckDB hands its filters on `ts`,
    `machine` and `sensor` to `scanner` (a cast column would keep them in DuckDB, and every
    file of every hour would be read).

    The filter's literals are naive timestamps, which pyarrow cannot compare with the files'
    UTC-adjusted ones; so the filter is applied here: first to the hour of each file (from
    its key: a file whose hour cannot match is never opened), then to the rows, read from
    the chosen files and converted to naive microseconds (exact: milliseconds in UTC).
    DuckDB only calls `scanner`; the empty table underneath is never read."""

    def __init__(self, source: ds.Dataset) -> None:
        self.naive_schema = pa.schema([pa.field(f.name, _NAIVE_TS) if f.name == "ts" else f for f in source.schema])
        super().__init__(self.naive_schema.empty_table())
        self.source = source
        self._by_hour: tuple[list[ds.Fragment], dict[tuple[int, int], list[int]], list[int]] | None = None

    def _hours(self) -> tuple[list[ds.Fragment], dict[tuple[int, int], list[int]], list[int]]:
        """The source's fragments, their indexes by hour [start, end) in epoch ms, and the
        indexes of those without an hour (read always). Computed once per dataset."""
        if self._by_hour is None:
            fragments = list(self.source.get_fragments())
            by_hour: dict[tuple[int, int], list[int]] = {}
            hourless: list[int] = []
            for i, fragment in enumerate(fragments):
                hour = _HOUR_KEY.search(fragment.path)
                if hour is None:
                    hourless.append(i)
                else:
                    by_hour.setdefault(hour_bounds_ms(hour["day"], hour["hour"]), []).append(i)
            self._by_hour = (fragments, by_hour, hourless)
        return self._by_hour

    def _pruned(self, filter: ds.Expression | None) -> ds.Dataset:
        source = self.source
        if filter is None or not isinstance(source, ds.FileSystemDataset):
            return source
        fragments, by_hour, hourless = self._hours()
        if not by_hour:
            return source
        hours = list(by_hour)
        # One stand-in fragment per hour, whose partition expression is that hour: pyarrow
        # tells which of them the filter can match. Nothing is opened here.
        shadow = [source.format.make_fragment(
            str(n), filesystem=source.filesystem,
            partition_expression=(ds.field("ts") >= pa.scalar(start * 1000, _NAIVE_TS))
            & (ds.field("ts") < pa.scalar(end * 1000, _NAIVE_TS)))
            for n, (start, end) in enumerate(hours)]
        matching = ds.FileSystemDataset(shadow, schema=self.naive_schema, format=source.format,
                                        filesystem=source.filesystem).get_fragments(filter=filter)
        kept = sorted(hourless + [i for f in matching for i in by_hour[hours[int(f.path)]]])
        return ds.FileSystemDataset([fragments[i] for i in kept], schema=source.schema, format=source.format,
                                    filesystem=source.filesystem)

    def scanner(self, *args, columns=None, filter=None, **kwargs) -> ds.Scanner:
        source = self._pruned(filter)
        read = None if filter is not None or columns is None else list(columns)
        schema = self.naive_schema if read is None else pa.schema([self.naive_schema.field(c) for c in read])

        def batches():
            for batch in source.to_batches(columns=read):
                yield batch.cast(schema) if "ts" in schema.names else batch

        return ds.Scanner.from_batches(batches(), schema=schema, columns=columns, filter=filter, **kwargs)


def _register_cold_raw(con: duckdb.DuckDBPyConnection, cold_raw) -> None:
    parts = [cold_raw] if isinstance(cold_raw, ds.Dataset) else list(cold_raw)
    for i, part in enumerate(parts):
        con.register(f"cold_raw_{i}", _NaiveTsDataset(part))
    # DuckDB's DECIMAL -> DOUBLE cast is one correctly rounded division: bit-exact.
    con.execute("CREATE VIEW cold_raw AS " + " UNION ALL ".join(
        f"SELECT machine, sensor, ts, value::DOUBLE AS value FROM cold_raw_{i}" for i in range(len(parts))))


def open_session(sources: SqlSources, *, memory_limit: int | None = None,
                 spill_dir: str | None = None) -> duckdb.DuckDBPyConnection:
    """A sandboxed session over `sources`. `memory_limit` (bytes) caps DuckDB, which spills
    to `spill_dir` beyond it or fails the query with its own message: a big query must not
    take the memory of the process it runs in (the ingesting instance, for the API)."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    if memory_limit:
        con.execute(f"SET memory_limit = '{int(memory_limit)}B'")
    if spill_dir:
        con.execute("SET temp_directory = ?", [spill_dir])
    for name in ("cold_quarantine", "cold_context", "hot_fresh", "hot_late",
                 "hot_quarantine", "hot_context", "audit"):
        con.register(name, getattr(sources, name))
    _register_cold_raw(con, sources.cold_raw)
    for name, source in _empty_defaults(sources).items():
        con.register(name, source)
    for name, schema in (("cold_alerts", ALERTS_SCHEMA), ("hot_alerts", ALERTS_SCHEMA),
                         ("recipe_limits", RECIPE_LIMITS_SCHEMA)):
        source = getattr(sources, name)
        con.register(name if name != "recipe_limits" else "recipe_limits_source",
                     schema.empty_table() if source is None else source)
    con.execute(_VIEWS.format(late_from=_ts_literal(sources.hot_late, "min"),
                              late_to=_ts_literal(sources.hot_late, "max")))
    con.execute("SET python_enable_replacements = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return con


def run_sql(sources: SqlSources, sql: str, *, memory_limit: int | None = None,
            spill_dir: str | None = None) -> pa.Table:
    """Run one read-only statement; a bad one raises SqlError with DuckDB's message."""
    con = open_session(sources, memory_limit=memory_limit, spill_dir=spill_dir)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from None
        if len(statements) != 1:
            raise SqlError(f"give exactly one statement, not {len(statements)}")
        if statements[0].type not in _ALLOWED:
            raise SqlError(f"only SELECT and EXPLAIN are allowed here, not {statements[0].type.name}: "
                           "the SQL surface is read-only")
        try:
            return con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from None
    finally:
        con.close()
