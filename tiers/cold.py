"""The cold tier: the Parquet lake laid out as CONTRACT.md section 7 says.

Object keys derive from the data and the log segment they came from
(`raw/date=D/hour=H/{writer}-{segment}.parquet`), so sealing a segment again after a crash
replaces its files instead of adding copies. Before a file is written, readings already in
that hour's other files are removed, so the lake stores each (machine, sensor, ts) once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tiers import parquetformat as fmt
from tiers.store import ObjectStore
from tiers.unsealed import ALERTS_SCHEMA, CONTEXT_SCHEMA, QUARANTINE_SCHEMA, READINGS_SCHEMA, SegmentTables

_SEGMENT_FILE = re.compile(r"^(?P<writer>[A-Za-z0-9_-]+)-(?P<segment>\d{12})\.parquet$")


class VerifyError(Exception):
    """A written object did not read back as written; the source is kept."""


@dataclass(frozen=True)
class Move:
    """One object written by a tier move, as the audit log records it."""

    what: str
    source: str
    target: str
    rows: int
    bytes: int
    checksum: str


def segment_of(key: str) -> tuple[str, int] | None:
    """(writer, segment) of a file written by sealing, from its name."""
    match = _SEGMENT_FILE.match(key.rsplit("/", 1)[-1])
    return (match["writer"], int(match["segment"])) if match else None


class ColdLake:
    def __init__(self, store: ObjectStore, *, writer_id: str) -> None:
        self.store = store
        self.writer_id = writer_id
        self._fs, self._root = store.arrow_filesystem()

    def _file_name(self, segment: int) -> str:
        return f"{self.writer_id}-{segment:012d}.parquet"

    def _write_verified(self, key: str, table: pa.Table, what: str, source: str) -> Move:
        data = fmt.to_parquet_bytes(table)
        self.store.put(key, data)
        expected = fmt.checksum(table)
        back = fmt.from_parquet_bytes(self.store.get(key)).select(table.column_names)
        if back.num_rows != table.num_rows or fmt.checksum(back) != expected:
            raise VerifyError(f"{key} read back {back.num_rows} rows, wrote {table.num_rows}")
        return Move(what=what, source=source, target=f"{self.store.url}/{key}",
                    rows=table.num_rows, bytes=len(data), checksum=expected)

    def _drop_stored(self, part: pa.Table, prefix: str, own_key: str) -> pa.Table:
        others = [k for k, _ in self.store.list(prefix) if k != own_key and k.endswith(".parquet")]
        if not others:
            return part
        dataset = ds.dataset([f"{self._root}/{k}" for k in others], filesystem=self._fs,
                             format="parquet", schema=READINGS_SCHEMA)
        ts = part.column("ts")
        stored = dataset.to_table(
            columns=["machine", "sensor", "ts"],
            filter=(ds.field("ts") >= pc.min(ts)) & (ds.field("ts") <= pc.max(ts))
            & ds.field("machine").isin(pc.unique(part.column("machine"))),
        )
        if stored.num_rows == 0:
            return part
        stored = stored.append_column("_stored", pa.array([True] * stored.num_rows))
        joined = part.join(stored, keys=["machine", "sensor", "ts"], join_type="left outer")
        kept = joined.filter(pc.is_null(joined.column("_stored"))).drop_columns(["_stored"])
        return fmt.sort_dedup(kept.select(READINGS_SCHEMA.names))

    def write_segment(self, segment: int, tables: SegmentTables, source: str) -> list[Move]:
        """Write one log segment's rows into the lake, verified; returns what was written."""
        moves = []
        name = self._file_name(segment)
        readings = tables.readings.cast(READINGS_SCHEMA)
        if not tables.presorted:
            readings = fmt.sort_dedup(readings)
        for (day, hour), part in fmt.split_by_hour(readings).items():
            prefix = f"raw/date={day}/hour={hour}/"
            part = self._drop_stored(part, prefix, prefix + name)
            if part.num_rows:
                moves.append(self._write_verified(prefix + name, part, "raw", source))
        for what, table, column in (("quarantine", tables.quarantine, "received_at"),
                                    ("context", tables.context, "ts"),
                                    ("alerts", tables.alerts, "ts")):
            for day, part in fmt.split_by_day(table, column).items():
                moves.append(self._write_verified(f"{what}/date={day}/{name}", part, what, source))
        return moves

    def files(self, kind: str, hidden_segments: set[int]) -> list[str]:
        """Paths (for `arrow_filesystem`) of the lake's `kind` files, minus this writer's
        files of segments that are not sealed yet (their rows are still read from memory)."""
        paths = []
        for key, _ in self.store.list(f"{kind}/"):
            if not key.endswith(".parquet"):
                continue
            origin = segment_of(key)
            if origin and origin[0] == self.writer_id and origin[1] in hidden_segments:
                continue
            paths.append(f"{self._root}/{key}")
        return paths

    def dataset(self, kind: str, hidden_segments: set[int] = frozenset()) -> ds.Dataset:
        schema = {"raw": READINGS_SCHEMA, "quarantine": QUARANTINE_SCHEMA, "context": CONTEXT_SCHEMA,
                  "alerts": ALERTS_SCHEMA}[kind]
        return ds.dataset(self.files(kind, set(hidden_segments)), filesystem=self._fs,
                          format="parquet", schema=schema)

    def readings_since(self, since_ms: int) -> pa.Table:
        """Raw readings with ts >= since_ms (to warm the hot ring on start)."""
        since = pa.scalar(since_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        return self.dataset("raw").to_table(filter=ds.field("ts") >= since)
