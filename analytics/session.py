"""A sandboxed DuckDB session over the tiers (CONTRACT.md section 4).

Every source is handed to DuckDB as an Arrow object before the session is locked: after
that, no statement can reach the file system, the network or an extension, and only one
SELECT (or EXPLAIN) per call is accepted. The one exception: a lake on local disk, whose raw
Parquet files DuckDB reads itself (its reader costs ~2 ms a query less than pyarrow streaming
them through a Python scanner, and keeps their footers): DuckDB may then open the files under
the lake's `raw/` and `agg_1m/` directories, and a statement that would open a file itself
(a table function, a path as a table) is refused before it runs (analytics.reach).

A session is reused from query to query (its views cost more to build than a narrow question
costs to answer): each query binds its sources to one consistent snapshot, and can change
nothing that the next one sees.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from alerts.acks import ACKS_SCHEMA
from alerts.recipes import RECIPE_LIMITS_SCHEMA
from analytics.leftout import ArchivedObject
from analytics.minutes import Shape, minutes_view
from analytics.minutes import shape as minutes_shape
from analytics.reach import file_access
from core.errors import SqlError
from tiers.catalog import FileStats as FileBounds
from tiers.parquetformat import hour_bounds_ms
from tiers.store import StoreError
from tiers.unsealed import ALERTS_SCHEMA

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}

_VIEWS = minutes_view(Shape.OVERLAPPING) + """;
CREATE VIEW late_new AS
  SELECT machine, sensor, ts, value FROM hot_late l
  WHERE NOT EXISTS (SELECT 1 FROM hot_fresh f
                    WHERE f.machine = l.machine AND f.sensor = l.sensor AND f.ts = l.ts)
    AND NOT EXISTS (SELECT 1 FROM cold_raw c
                    WHERE c.ts BETWEEN getvariable('late_from') AND getvariable('late_to')
                      AND c.machine = l.machine AND c.sensor = l.sensor AND c.ts = l.ts::TIMESTAMP)
  QUALIFY row_number() OVER (PARTITION BY machine, sensor, ts) = 1;
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
CREATE VIEW alert_acks AS
  SELECT alert_id, who, "at"::TIMESTAMP AS "at", note FROM acks;
CREATE VIEW recipe_limits AS
  SELECT recipe, version, effective::TIMESTAMP AS effective, step_no, step, step_start_s,
         step_end_s, settle_s, kind, setpoint, tolerance, low, high FROM recipe_limits_source;
CREATE VIEW tier_moves AS
  SELECT "at"::TIMESTAMP AS "at", job, what, source, target, rows, bytes, checksum FROM audit;
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


# `readings` unites the parts of the snapshot that have rows, and is rebuilt when that changes
# (rarely: a running pipeline almost always has fresh rows and almost never late ones). DuckDB
# cannot know that a Python object has no rows, and planning an empty part costs as much as a
# narrow answer (the late part's checks against the lake most: ~1.8 ms a statement).
# cold_raw's ts is a TIMESTAMP already (_NaiveTsDataset): no cast, so filters reach the scan.
_READINGS_PARTS = ("SELECT machine, sensor, ts, value FROM cold_raw",
                   "SELECT machine, sensor, ts::TIMESTAMP AS ts, value FROM hot_fresh",
                   "SELECT machine, sensor, ts::TIMESTAMP AS ts, value FROM late_new")


def readings_view(*, has_fresh: bool, has_late: bool) -> str:
    """The statement that makes `readings` the union of the parts that have rows."""
    parts = [part for part, present in zip(_READINGS_PARTS, (True, has_fresh, has_late), strict=True) if present]
    return "CREATE OR REPLACE VIEW readings AS " + raw_union(parts)


def raw_union(selects: Sequence[str]) -> str:
    """`selects` (each `SELECT machine, sensor, ts, value ...`) as one query of those columns.

    A statement that needs none of a union's columns (`count(*)`) still makes DuckDB read one
    column of every row from each part: the union's first. Here the first is a constant that
    the outer SELECT drops, so such a statement reads no column and DuckDB counts the lake's
    rows from the files' footers (count(*) of 30 M lake rows and 3 M unsealed: 57 -> 15 ms of
    CPU). A statement that needs a column reads it as before: the constant is pruned."""
    if len(selects) == 1:
        return selects[0]
    tagged = ["SELECT NULL AS _rows, " + s.removeprefix("SELECT ") for s in selects]
    return "SELECT machine, sensor, ts, value FROM (" + "\n  UNION ALL ".join(tagged) + ")"


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
    acks: pa.Table | None = None  # alert acknowledgements (alerts.acks); None: none
    # The warm tier (issue 5): minutes in the warm store, minutes aged out to the lake, and
    # the history of tiering job runs. None: empty.
    warm_1m: pa.Table | None = None
    cold_agg_1m: ds.Dataset | pa.Table | None = None
    job_history: pa.Table | None = None
    # Raw lake objects a reader would read but cannot (archived, not restored): what an
    # answer over `readings` leaves out (analytics.leftout).
    archived_raw: Sequence[ArchivedObject] = ()
    # Per raw file (its path in `cold_raw`'s file system): the catalog's statistics, by which
    # a file that cannot hold a row the statement asks for is never opened.
    cold_raw_bounds: Mapping[str, FileBounds] = dataclasses.field(default_factory=dict)
    cold_agg_1m_bounds: Mapping[str, FileBounds] = dataclasses.field(default_factory=dict)
    # The lake's directory when it is on local disk (ColdLake.local_root): DuckDB then reads
    # `cold_raw`'s files itself. None: every source is read as an Arrow object.
    lake_dir: str | None = None


def _empty_defaults(sources: SqlSources) -> dict[str, object]:
    from lifecycle.runs import RUNS_SCHEMA
    from tiers.warm import MINUTES_SCHEMA
    return {
        "warm_1m": sources.warm_1m if sources.warm_1m is not None else MINUTES_SCHEMA.empty_table(),
        "cold_agg_1m": sources.cold_agg_1m if sources.cold_agg_1m is not None else MINUTES_SCHEMA.empty_table(),
        "job_history": sources.job_history if sources.job_history is not None else RUNS_SCHEMA.empty_table(),
    }


def _naive_ts(table: pa.Table) -> pa.Table:
    """The hot tier's rows with `ts` as UTC milliseconds without a time zone, as
    `UnsealedData.tables` gives them (tiers.unsealed.SQL_SCHEMA says why); rows read back
    from the log come with one, and the cast copies nothing."""
    ts = table.schema.field("ts").type
    if ts.tz is None:
        return table
    return table.cast(pa.schema([pa.field("ts", pa.timestamp(ts.unit)) if f.name == "ts" else f
                                 for f in table.schema]))


def _ts_bound(table: pa.Table, fn: str) -> str:
    if table.num_rows == 0:
        return "NULL::TIMESTAMP"
    value = getattr(pc, fn)(table.column("ts")).cast(pa.int64()).as_py()
    return f"make_timestamp({int(value) * 1000})"  # cold_raw's ts is a TIMESTAMP (UTC)


_NAIVE_TS = pa.timestamp("us")
_HOUR_KEY = re.compile(r"/date=(?P<day>\d{4}-\d{2}-\d{2})/(?:hour=(?P<hour>\d{2})/)?[^/]+$")


class _NaiveTsDataset(ds.InMemoryDataset):
    """A lake dataset as DuckDB sees it: `ts` a plain TIMESTAMP (microseconds, UTC wall
    time), so that the `readings` view needs no cast and DuckDB hands its filters on `ts`,
    `machine` and `sensor` to `scanner` (a cast column would keep them in DuckDB, and every
    file of every hour would be read).

    The filter's literals are naive timestamps, which pyarrow cannot compare with the files'
    UTC-adjusted ones; so the filter is applied here: first to the hour of each file (from
    its key: a file whose hour cannot match is never opened), then to the rows, read from
    the chosen files and converted to naive microseconds (exact: milliseconds in UTC).
    DuckDB only calls `scanner`; the empty table underneath is never read.

    `time`: the time column (`minute` for the lake's aggregates, whose files are one a day)."""

    def __init__(self, source: ds.Dataset, bounds: Mapping[str, FileBounds] | None = None, *,
                 time: str = "ts") -> None:
        self.time = time
        self.naive_schema = pa.schema([pa.field(f.name, _NAIVE_TS) if f.name == time else f for f in source.schema])
        super().__init__(self.naive_schema.empty_table())
        self.source = source
        self.bounds = bounds or {}
        self._guarantees: tuple[list[ds.Fragment], list[ds.Expression | None]] | None = None

    def swap(self, source: ds.Dataset | None, bounds: Mapping[str, FileBounds] | None) -> None:
        """Read `source` from now on (a reused session's next snapshot; None: nothing)."""
        self.source = source if source is not None else ds.dataset(self.naive_schema.empty_table())
        self.bounds = bounds or {}
        self._guarantees = None

    def _guarantee(self, path: str) -> ds.Expression | None:
        """What every row of the file at `path` satisfies: its time and machine ranges from the
        catalog's statistics, else its hour from its key (None: nothing known, read it)."""
        known = self.bounds.get(path)
        if known is not None and known.t_min_ms is not None and known.t_max_ms is not None:
            guarantee = ((ds.field(self.time) >= pa.scalar(known.t_min_ms * 1000, _NAIVE_TS))
                         & (ds.field(self.time) <= pa.scalar(known.t_max_ms * 1000, _NAIVE_TS)))
            if known.machine_min is not None and known.machine_max is not None:
                guarantee = guarantee & (ds.field("machine") >= known.machine_min) & (
                    ds.field("machine") <= known.machine_max)
            return guarantee
        hour = _HOUR_KEY.search(path)
        if hour is None:
            return None
        if hour["hour"] is not None:
            start, end = hour_bounds_ms(hour["day"], hour["hour"])
        else:  # a day's file
            start, end = hour_bounds_ms(hour["day"], "00")[0], hour_bounds_ms(hour["day"], "23")[1]
        return ((ds.field(self.time) >= pa.scalar(start * 1000, _NAIVE_TS))
                & (ds.field(self.time) < pa.scalar(end * 1000, _NAIVE_TS)))

    def _pruned(self, filter: ds.Expression | None) -> ds.Dataset:
        source = self.source
        if filter is None or not isinstance(source, ds.FileSystemDataset):
            return source
        if self._guarantees is None:
            fragments = list(source.get_fragments())
            self._guarantees = (fragments, [self._guarantee(f.path) for f in fragments])
        fragments, guarantees = self._guarantees
        # One stand-in fragment per file, whose partition expression is what the file holds:
        # pyarrow tells which of them the filter can match. Nothing is opened here.
        shadow = [source.format.make_fragment(str(n), filesystem=source.filesystem, partition_expression=g)
                  for n, g in enumerate(guarantees) if g is not None]
        matching = {int(f.path) for f in ds.FileSystemDataset(
            shadow, schema=self.naive_schema, format=source.format,
            filesystem=source.filesystem).get_fragments(filter=filter)}
        kept = [f for n, (f, g) in enumerate(zip(fragments, guarantees, strict=True)) if g is None or n in matching]
        return ds.FileSystemDataset(kept, schema=source.schema, format=source.format, filesystem=source.filesystem)

    def _read(self, columns, filter) -> list[str] | None:
        """The columns to read: those asked for, and those the filter names (found by name
        in its text: a name too many costs a column read, never a wrong row)."""
        if columns is None:
            return None
        if filter is None:
            return list(columns)
        text = str(filter)
        return [name for name in self.naive_schema.names
                if name in columns or re.search(rf"\b{re.escape(name)}\b", text)]

    def scanner(self, *args, columns=None, filter=None, **kwargs) -> ds.Scanner:
        source = self._pruned(filter)
        read = self._read(columns, filter)
        schema = self.naive_schema if read is None else pa.schema([self.naive_schema.field(c) for c in read])

        def batches():
            for batch in source.to_batches(columns=read):
                yield batch.cast(schema) if self.time in schema.names else batch

        return ds.Scanner.from_batches(batches(), schema=schema, columns=columns, filter=filter, **kwargs)


class _Swapped(ds.InMemoryDataset):
    """A dataset source as a session registers it once: what it reads is swapped per query (a
    session is reused, and registering an object with DuckDB costs more than most queries).
    DuckDB hands its projection and filters to `scanner`, as for any Arrow dataset. (Tables
    are `_SwappedTable`.)"""

    def __init__(self, schema: pa.Schema) -> None:
        super().__init__(schema.empty_table())
        self.current: ds.Dataset | None = None

    def scanner(self, *args, columns=None, filter=None, **kwargs) -> ds.Scanner:
        current = self.current if self.current is not None else ds.dataset(self.schema.empty_table())
        return current.scanner(*args, columns=columns, filter=filter, **kwargs)


class _SwappedTable:
    """`_Swapped` for an in-memory table (the hot tier's, the warm snapshot, the trails): an
    Arrow stream of whatever table is current. DuckDB reads it as it reads a table, without
    the Python scanner a dataset needs: ~0.5 ms less a scan, and a filtered scan of millions
    of hot rows several times faster (DuckDB filters them itself; nothing is read from disk,
    so there is nothing to push down)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.current: pa.Table | None = None

    def __arrow_c_schema__(self):
        return self.schema.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema=None):
        current = self.current if self.current is not None else self.schema.empty_table()
        return current.__arrow_c_stream__(requested_schema)


_TABLE_SOURCES = ("cold_quarantine", "cold_context", "hot_fresh", "hot_late", "hot_quarantine", "hot_context",
                  "audit")


class Session:
    """A sandboxed DuckDB session with the views of CONTRACT.md section 4, reused from query
    to query (`SessionPool`): `bind` points its sources at a snapshot, `release` lets go of
    the snapshot. Nothing a statement can run outlives it: only one SELECT or EXPLAIN is
    accepted, the configuration is locked, and the file system, network and extensions are
    out of reach."""

    def __init__(self, *, memory_limit: int | None = None, spill_dir: str | None = None,
                 lake_dir: str | None = None) -> None:
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{int(memory_limit)}B'")
        if spill_dir:
            self.con.execute("SET temp_directory = ?", [spill_dir])
        # The lake's raw files, when on local disk, are read by DuckDB itself (the module's
        # docstring): the only directory a statement can reach, fixed before the lock.
        self.raw_dir = f"{lake_dir.rstrip('/')}/raw/" if lake_dir else None
        self.agg_dir = f"{lake_dir.rstrip('/')}/agg_1m/" if lake_dir else None
        if self.raw_dir is not None:
            self.con.execute("SET allowed_directories = ?", [[self.raw_dir, self.agg_dir]])
            # Footers are read once (a file rewritten later is read again: DuckDB compares
            # its modification time), so a question over many files does not reopen them all.
            self.con.execute("SET parquet_metadata_cache = true")
        self._sources: dict[str, _Swapped | _SwappedTable] = {}
        self._raw_parts: list[_NaiveTsDataset | None] = []  # None: a part DuckDB reads itself
        self._raw_shape: list[tuple[bool, pa.Schema]] = []
        self._agg: _NaiveTsDataset | None = None
        self._agg_native: bool | None = None  # how `cold_agg_1m` reads now (None: not built)
        self._files: dict[str, list[str]] = {}  # the file lists the session's variables hold
        self._variables: tuple[str, ...] | None = None
        self._readings_shape: tuple[bool, bool] | None = None
        self._minutes_shape = Shape.OVERLAPPING  # as _VIEWS builds `readings_1m`
        self._ready = False

    def _source(self, name: str, data: ds.Dataset | pa.Table) -> None:
        swapped = self._sources.get(name)
        kind = _SwappedTable if isinstance(data, pa.Table) else _Swapped
        if swapped is None or type(swapped) is not kind or not swapped.schema.equals(data.schema):
            swapped = kind(data.schema)
            self.con.register(name, swapped)
            self._sources[name] = swapped
        swapped.current = data

    @staticmethod
    def _native_files(part: ds.Dataset | pa.Table, directory: str | None) -> list[str] | None:
        """The files of `part` when DuckDB may read them itself: a dataset of files on local
        disk, every one under `directory` (the lake's `raw/` or `agg_1m/`). None: read it
        through pyarrow."""
        if (directory is None or not isinstance(part, ds.FileSystemDataset)
                or not isinstance(part.filesystem, pafs.LocalFileSystem)):
            return None
        files = part.files
        return files if files and all(f.startswith(directory) for f in files) else None

    def _set_files(self, variable: str, files: list[str]) -> None:
        """Point `variable` at `files`, unless it holds them already (a statement asked again:
        setting a variable costs ~0.4 ms)."""
        if self._files.get(variable) != files:
            self.con.execute(f"SET VARIABLE {variable} = ?", [files])
            self._files[variable] = files

    def _cold_raw(self, cold_raw, bounds: Mapping[str, FileBounds]) -> None:
        """`cold_raw`: one part per value encoding, each read by DuckDB's own Parquet reader
        (files on local disk, named by a variable) or through `_NaiveTsDataset`; the view is
        rebuilt only when the parts' kinds or schemas change."""
        datasets = [cold_raw] if isinstance(cold_raw, ds.Dataset) else list(cold_raw)
        native = [self._native_files(p, self.raw_dir) for p in datasets]
        parts = [None if files is not None else _NaiveTsDataset(p, bounds) for p, files in zip(datasets, native, strict=True)]
        for i, files in enumerate(native):
            if files is not None:  # set before the view is (re)built: DuckDB binds it then
                self._set_files(f"cold_raw_files_{i}", files)
        shape = [(p is None, d.schema) for p, d in zip(parts, datasets, strict=True)]
        if shape == self._raw_shape:
            for registered, part in zip(self._raw_parts, parts, strict=True):
                if registered is not None and part is not None:
                    registered.swap(part.source, bounds)
            return
        selects = []
        for i, part in enumerate(parts):
            if part is None:
                # The files' ts is UTC-adjusted (TIMESTAMP WITH TIME ZONE to DuckDB): cast to the
                # view's TIMESTAMP; DuckDB still prunes row groups by it, widened by hours.
                selects.append(f"SELECT machine, sensor, ts::TIMESTAMP AS ts, value::DOUBLE AS value "
                               f"FROM read_parquet(getvariable('cold_raw_files_{i}'))")
            else:
                self.con.register(f"cold_raw_{i}", part)
                selects.append(f"SELECT machine, sensor, ts, value::DOUBLE AS value FROM cold_raw_{i}")
        # DuckDB's DECIMAL -> DOUBLE cast is one correctly rounded division: bit-exact.
        self.con.execute("CREATE OR REPLACE VIEW cold_raw AS " + raw_union(selects))
        self._raw_parts = parts
        self._raw_shape = shape

    def _cold_agg(self, data: ds.Dataset | pa.Table, bounds: Mapping[str, FileBounds]) -> None:
        """`cold_agg_1m`: the lake's minutes, read by DuckDB itself (files on local disk) or
        through `_NaiveTsDataset` (registered as `cold_agg_1m_arrow`)."""
        files = self._native_files(data, self.agg_dir)
        if files is not None:
            self._set_files("cold_agg_files", files)  # before the view binds
            if self._agg_native is not True:
                self.con.execute(
                    "CREATE OR REPLACE VIEW cold_agg_1m AS SELECT machine, sensor, minute::TIMESTAMP AS minute, "
                    "n, \"min\", \"max\", \"avg\", \"first\", \"last\" FROM read_parquet(getvariable('cold_agg_files'))")
                self._agg_native = True
            return
        part = _NaiveTsDataset(data if isinstance(data, ds.Dataset) else ds.dataset(data), bounds, time="minute")
        if self._agg is not None and self._agg.naive_schema.equals(part.naive_schema):
            self._agg.swap(part.source, bounds)
        else:
            self.con.register("cold_agg_1m_arrow", part)
            self._agg = part
            self._agg_native = None
        if self._agg_native is not False:
            self.con.execute("CREATE OR REPLACE VIEW cold_agg_1m AS SELECT * FROM cold_agg_1m_arrow")
            self._agg_native = False

    def bind(self, sources: SqlSources) -> None:
        for name in _TABLE_SOURCES:
            table = getattr(sources, name)
            self._source(name, _naive_ts(table) if name in ("hot_fresh", "hot_late") else table)
        for name, default in _empty_defaults(sources).items():
            if name == "cold_agg_1m":
                self._cold_agg(default, sources.cold_agg_1m_bounds)
            else:
                self._source(name, default)
        for name, schema in (("cold_alerts", ALERTS_SCHEMA), ("hot_alerts", ALERTS_SCHEMA),
                             ("recipe_limits", RECIPE_LIMITS_SCHEMA), ("acks", ACKS_SCHEMA)):
            source = getattr(sources, name)
            self._source(name if name != "recipe_limits" else "recipe_limits_source",
                         schema.empty_table() if source is None else source)
        self._cold_raw(sources.cold_raw, sources.cold_raw_bounds)
        variables = (_ts_bound(sources.hot_late, "min"), _ts_bound(sources.hot_late, "max"))
        if variables != self._variables:
            for name, value in zip(("late_from", "late_to"), variables, strict=True):
                self.con.execute(f"SET VARIABLE {name} = {value}")
            self._variables = variables
        if not self._ready:
            self.con.execute(_VIEWS)
        shape = (sources.hot_fresh.num_rows > 0, sources.hot_late.num_rows > 0)
        if shape != self._readings_shape:
            self.con.execute(readings_view(has_fresh=shape[0], has_late=shape[1]))
            self._readings_shape = shape
        minutes = minutes_shape(sources.warm_1m, sources.cold_agg_1m, sources.cold_agg_1m_bounds)
        if minutes != self._minutes_shape:
            self.con.execute(minutes_view(minutes))
            self._minutes_shape = minutes
        if not self._ready:
            self.con.execute("SET python_enable_replacements = false")
            self.con.execute("SET enable_external_access = false")
            self.con.execute("SET autoinstall_known_extensions = false")
            self.con.execute("SET autoload_known_extensions = false")
            self.con.execute("SET lock_configuration = true")
            self._ready = True

    def release(self) -> None:
        """Let go of the snapshot (the hot tier's tables can be large)."""
        for swapped in self._sources.values():
            swapped.current = None
        for part in self._raw_parts + [self._agg]:
            if part is not None:
                part.swap(None, None)

    def run(self, sql: str) -> pa.Table:
        """One read-only statement; a bad one raises SqlError with DuckDB's message."""
        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from None
        if len(statements) != 1:
            raise SqlError(f"give exactly one statement, not {len(statements)}")
        if statements[0].type not in _ALLOWED:
            raise SqlError(f"only SELECT and EXPLAIN are allowed here, not {statements[0].type.name}: "
                           "the SQL surface is read-only")
        # Where DuckDB may read the lake's files, only the views may; elsewhere DuckDB refuses
        # any file, and the same statements get the same message.
        reason = file_access(sql)
        if reason is not None:
            raise SqlError(reason)
        try:
            return self.con.sql(sql).to_arrow_table()
        except duckdb.IOException as exc:
            if self.raw_dir is not None and self.raw_dir in str(exc):  # a lake file failed (or went)
                raise StoreError(f"a file of the lake could not be read: {exc}") from None
            raise SqlError(str(exc)) from None
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from None

    def close(self) -> None:
        self.con.close()


_SessionKind = tuple[int | None, str | None, str | None]  # memory limit, spill directory, lake


class SessionPool:
    """Idle sessions by their limits and lake, so that a query does not build its session's
    views (most of the cost of a narrow question). A session serves one query at a time."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._idle: dict[_SessionKind, list[Session]] = {}
        self._lock = threading.Lock()

    def take(self, kind: _SessionKind) -> Session:
        with self._lock:
            idle = self._idle.get(kind)
            if idle:
                return idle.pop()
        memory_limit, spill_dir, lake_dir = kind
        return Session(memory_limit=memory_limit, spill_dir=spill_dir, lake_dir=lake_dir)

    def give_back(self, session: Session, kind: _SessionKind) -> None:
        session.release()
        with self._lock:
            idle = self._idle.setdefault(kind, [])
            if len(idle) < self.keep:
                idle.append(session)
                return
        session.close()


_POOL = SessionPool()


def open_session(sources: SqlSources, *, memory_limit: int | None = None,
                 spill_dir: str | None = None) -> duckdb.DuckDBPyConnection:
    """A sandboxed session of its own over `sources` (the caller closes it). `memory_limit`
    (bytes) caps DuckDB, which spills to `spill_dir` beyond it or fails the query with its
    own message: a big query must not take the memory of the process it runs in."""
    session = Session(memory_limit=memory_limit, spill_dir=spill_dir, lake_dir=sources.lake_dir)
    session.bind(sources)
    return session.con


def run_sql(sources: SqlSources, sql: str, *, memory_limit: int | None = None,
            spill_dir: str | None = None) -> pa.Table:
    """Run one read-only statement in a pooled session; a bad one raises SqlError with
    DuckDB's message."""
    kind = (memory_limit, spill_dir, sources.lake_dir)
    session = _POOL.take(kind)
    try:
        session.bind(sources)
        result = session.run(sql)
    except BaseException:
        session.close()  # a session that failed midway is not trusted again
        raise
    _POOL.give_back(session, kind)
    return result
