"""Turning reading tables into Parquet bytes and back, and the checks on them. Pure, no I/O.

Files are written for every reader (DuckDB, pyarrow, Spark, Athena engine v3): `ts` is an
INT64 millisecond timestamp adjusted to UTC, rows are sorted by (machine, sensor, ts) so
that row-group statistics prune well, names are dictionary-encoded, timestamps
delta-encoded, and pages compressed with zstd.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SORT_KEYS = [("machine", "ascending"), ("sensor", "ascending"), ("ts", "ascending")]
ROW_GROUP_SIZE = 1 << 20


def sort_dedup(table: pa.Table) -> pa.Table:
    """Sort by (machine, sensor, ts) and keep the first arrival of each key."""
    if table.num_rows == 0:
        return table
    table = table.take(pc.sort_indices(table, sort_keys=SORT_KEYS))  # stable: first arrival first
    same = None
    for name in ("machine", "sensor", "ts"):
        column = table.column(name)
        equal = pc.equal(column.slice(1), column.slice(0, table.num_rows - 1))
        same = equal if same is None else pc.and_(same, equal)
    keep = pa.concat_arrays([pa.array([True]), pc.invert(same).combine_chunks()])
    return table.filter(keep)


def to_parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=3,
        use_dictionary=[c for c in ("machine", "sensor", "topic", "reason", "event", "lot", "wafer", "recipe",
                                  "recipe_version", "writer", "kind", "rule", "state", "step")
                        if c in table.column_names],
        column_encoding={c: "DELTA_BINARY_PACKED" for c in ("ts", "received_at") if c in table.column_names},
        row_group_size=ROW_GROUP_SIZE,
        write_statistics=True,
        coerce_timestamps="ms",
        allow_truncated_timestamps=False,
    )
    return sink.getvalue().to_pybytes()


def from_parquet_bytes(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))


def checksum(table: pa.Table) -> str:
    """A digest of the readings' content, equal for equal rows in equal order."""
    digest = hashlib.sha256()
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            # Codes in order of first appearance plus the distinct values: equal for equal
            # sequences, and computed in Arrow instead of one Python string per row.
            encoded = pc.dictionary_encode(column)
            digest.update(encoded.indices.to_numpy(zero_copy_only=False).tobytes())
            digest.update("\0".join(encoded.dictionary.to_pylist()).encode())
        elif pa.types.is_timestamp(column.type):
            digest.update(column.cast(pa.int64()).fill_null(0).to_numpy().tobytes())
        else:
            digest.update(column.to_numpy(zero_copy_only=False).tobytes())
    return digest.hexdigest()


def split_by_hour(table: pa.Table, column: str = "ts") -> dict[tuple[str, str], pa.Table]:
    """Rows grouped by their UTC hour: {("2026-11-27", "08"): table}."""
    if table.num_rows == 0:
        return {}
    ms = table.column(column).cast(pa.int64()).to_numpy()
    hours = ms // 3_600_000
    if hours.min() == hours.max():  # the usual case: no copy
        moment = np.datetime64(int(hours[0]), "h")
        return {(str(moment.astype("datetime64[D]")), f"{int(hours[0]) % 24:02d}"): table}
    result = {}
    for hour in np.unique(hours):
        rows = table.filter(pa.array(hours == hour))
        moment = np.datetime64(int(hour), "h")
        day, hh = str(moment.astype("datetime64[D]")), f"{int(hour) % 24:02d}"
        result[(day, hh)] = rows
    return result


def split_by_day(table: pa.Table, column: str) -> dict[str, pa.Table]:
    """Rows grouped by their UTC day: {"2026-11-27": table}."""
    if table.num_rows == 0:
        return {}
    days = table.column(column).cast(pa.int64()).to_numpy() // 86_400_000
    return {str(np.datetime64(int(day), "D")): table.filter(pa.array(days == day))
            for day in np.unique(days)}
