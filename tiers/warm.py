"""The warm tier: per-minute aggregates (`readings_1m`) in a DuckDB file, `{data_dir}/warm.duckdb`.

This module is the file's only owner: it creates the tables, upserts recomputed minutes,
hands out Arrow snapshots for the SQL session and removes minutes that were aged out.
The rollup's bookkeeping (how far it has read the audit trail) lives in the same file and is
written in the same transaction as the minutes, so a crash can never leave one without the
other. What to compute is decided elsewhere (lifecycle/rollup.py, lifecycle/warmjobs.py).

DuckDB allows one read-write process per file; the pipeline holds it (under the data
directory's exclusive lock), and readers without a running instance open it read-only.
Within the process every operation takes its own cursor, so jobs and queries may run in
parallel threads; DuckDB's transactions give each a consistent snapshot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

# The contract's columns (CONTRACT.md section 4); `minute` is UTC.
MINUTES_SCHEMA = pa.schema([
    ("machine", pa.string()),
    ("sensor", pa.string()),
    ("minute", pa.timestamp("ms", tz="UTC")),
    ("n", pa.int64()),
    ("min", pa.float64()),
    ("max", pa.float64()),
    ("avg", pa.float64()),
    ("first", pa.float64()),
    ("last", pa.float64()),
])
_COLUMNS = ", ".join(f'"{name}"' for name in MINUTES_SCHEMA.names)
_SELECT_UTC = 'machine, sensor, minute, n, "min", "max", "avg", "first", "last"'

_DDL = """
CREATE TABLE IF NOT EXISTS readings_1m (
  machine VARCHAR NOT NULL, sensor VARCHAR NOT NULL, minute TIMESTAMP NOT NULL,
  n BIGINT NOT NULL, "min" DOUBLE, "max" DOUBLE, "avg" DOUBLE, "first" DOUBLE, "last" DOUBLE,
  PRIMARY KEY (machine, sensor, minute));
CREATE TABLE IF NOT EXISTS warm_state (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL);
"""


@dataclass(frozen=True)
class WarmStats:
    rows: int
    bytes: int
    oldest_ms: int | None
    newest_ms: int | None


def _to_utc_naive(table_name: str) -> str:
    # Arrow timestamps with tz arrive as TIMESTAMPTZ; the column is a plain UTC TIMESTAMP.
    return (f'SELECT machine, sensor, timezone(\'UTC\', minute) AS minute, n, "min", "max", "avg", '
            f'"first", "last" FROM {table_name}')


def _as_minutes(table: pa.Table) -> pa.Table:
    """A result with DuckDB's TIMESTAMP (µs, no zone) as the contract's Arrow schema."""
    minute = table.column("minute").cast(pa.timestamp("ms")).cast(pa.timestamp("ms", tz="UTC"))
    return table.set_column(table.schema.get_field_index("minute"), "minute", minute).cast(MINUTES_SCHEMA)


class WarmStore:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        if read_only and not path.exists():
            self._con = None  # nothing rolled up yet: an empty warm tier
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(path), read_only=read_only)
            self._con.execute("SET TimeZone = 'UTC'")
            if not read_only:
                self._con.execute(_DDL)
        self._version = 0
        self._snapshot: tuple[int, pa.Table] | None = None
        self._lock = threading.Lock()

    @classmethod
    def open_read_only(cls, data_dir: Path) -> WarmStore:
        return cls(data_dir / "warm.duckdb", read_only=True)

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("the warm store is closed or was never created")
        cursor = self._con.cursor()
        cursor.execute("SET TimeZone = 'UTC'")
        return cursor

    def close(self) -> None:
        if self._con is not None:
            if not self.read_only:
                self._con.execute("CHECKPOINT")
            self._con.close()
            self._con = None

    # ---- writes ------------------------------------------------------------------------
    def upsert(self, minutes: pa.Table, *, state: dict[str, int] | None = None) -> None:
        """Insert or replace whole minutes, and set bookkeeping values, in one transaction."""
        cursor = self._cursor()
        try:
            cursor.execute("BEGIN TRANSACTION")
            if minutes.num_rows:
                cursor.register("new_minutes", minutes.cast(MINUTES_SCHEMA))
                cursor.execute(f"INSERT OR REPLACE INTO readings_1m ({_COLUMNS}) "
                               + _to_utc_naive("new_minutes"))
            for name, value in (state or {}).items():
                cursor.execute("INSERT OR REPLACE INTO warm_state VALUES (?, ?)", [name, int(value)])
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        finally:
            cursor.close()
        with self._lock:
            self._version += 1

    def delete_unchanged(self, minutes: pa.Table) -> int:
        """Remove these rows, but only where the stored row still equals the given one: a minute
        recomputed meanwhile (late data) stays, and the next age-out takes its new value."""
        if minutes.num_rows == 0:
            return 0
        cursor = self._cursor()
        try:
            cursor.register("old_minutes", minutes.cast(MINUTES_SCHEMA))
            same = " AND ".join(f'w."{c}" IS NOT DISTINCT FROM o."{c}"'
                                for c in ("n", "min", "max", "avg", "first", "last"))
            result = cursor.execute(
                f"DELETE FROM readings_1m w USING ({_to_utc_naive('old_minutes')}) o "
                f"WHERE w.machine = o.machine AND w.sensor = o.sensor AND w.minute = o.minute AND {same}"
            ).fetchall()
        finally:
            cursor.close()
        with self._lock:
            self._version += 1
        return int(result[0][0]) if result else 0

    # ---- reads -------------------------------------------------------------------------
    def state(self, name: str) -> int | None:
        if self._con is None:
            return None
        cursor = self._cursor()
        try:
            found = cursor.execute("SELECT value FROM warm_state WHERE name = ?", [name]).fetchone()
        finally:
            cursor.close()
        return None if found is None else int(found[0])

    def minutes_before(self, cutoff_ms: int) -> pa.Table:
        """Every stored minute that ended at or before `cutoff_ms`, ordered by key."""
        if self._con is None:
            return MINUTES_SCHEMA.empty_table()
        cursor = self._cursor()
        try:
            table = cursor.sql(
                f"SELECT {_SELECT_UTC} FROM readings_1m "
                "WHERE minute + INTERVAL 1 MINUTE <= make_timestamp($1 * 1000) "
                "ORDER BY machine, sensor, minute", params=[int(cutoff_ms)]).to_arrow_table()
        finally:
            cursor.close()
        return _as_minutes(table)

    def snapshot(self) -> pa.Table:
        """Every stored minute as one Arrow table, for the sealed SQL session.

        Cached until the next write: queries share it, and it costs nothing when unchanged.
        """
        if self._con is None:
            return MINUTES_SCHEMA.empty_table()
        with self._lock:
            version = self._version
            if self._snapshot is not None and self._snapshot[0] == version:
                return self._snapshot[1]
        cursor = self._cursor()
        try:
            table = _as_minutes(cursor.sql(f"SELECT {_SELECT_UTC} FROM readings_1m").to_arrow_table())
        finally:
            cursor.close()
        with self._lock:
            if self._version == version:
                self._snapshot = (version, table)
        return table

    def stats(self) -> WarmStats:
        size = sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + ".wal"))
                   if p.exists())
        if self._con is None:
            return WarmStats(0, size, None, None)
        cursor = self._cursor()
        try:
            found = cursor.execute(
                "SELECT count(*), epoch_ms(min(minute)), epoch_ms(max(minute)) FROM readings_1m").fetchone()
        finally:
            cursor.close()
        if found is None:  # cannot happen: an aggregate without GROUP BY gives one row
            raise RuntimeError("the warm store's statistics query returned no row")
        rows, oldest, newest = found
        return WarmStats(int(rows), size, oldest, newest)
