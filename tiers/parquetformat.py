"""Turning reading tables into Parquet bytes and back, and the checks on them. Pure, no I/O.

Files are written for every reader (DuckDB, pyarrow, Spark, Athena engine v3): `ts` is an
INT64 millisecond timestamp adjusted to UTC, rows are sorted by (machine, sensor, ts) so
that row-group statistics prune well, names are dictionary-encoded, timestamps
delta-encoded, and pages compressed with zstd.

Values: sensors quantise (a reading is a whole number of its resolution, 0.01 degC, 0.1 W),
and a quantised double is stored most cheaply as the integer it is. A group of readings
whose every value `v` satisfies `u / 10**s == v` bit for bit, for one integer `u` per value
(|u| < 2**53) and one scale `s` in 0..9, is written as a Parquet DECIMAL(18, s) on INT64
with DELTA_BINARY_PACKED: consecutive readings of a sensor differ by a few steps, so most
values take a byte or less. Everything else (more digits, -0.0, huge magnitudes) is written
as DOUBLE. Both are numbers to every engine; the decimal is converted back exactly by
`u / 10**s` in float64 arithmetic (one correctly rounded division), which is what DuckDB's
DECIMAL -> DOUBLE cast does and what `exact_float64` does here. (Arrow's own cast
multiplies by 10**-s and may be one unit in the last place off, so it is never used.)

A table is split into encoding groups by sensor (`split_by_encoding`): one Parquet file per
group, because a Parquet column has one type. The group's name (`d0`..`d9`, `f64`) goes
into the file name so that readers know a file's type without opening it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SORT_KEYS = [("machine", "ascending"), ("sensor", "ascending"), ("ts", "ascending")]
# Rows per row group. Sorted by (machine, sensor, ts), a row group of 256 Ki readings at
# about 1.2 bytes each is ~300 KB: small enough that a one-machine query skips the other
# machines' row groups by their min/max statistics, big enough that footers stay small.
ROW_GROUP_SIZE = 1 << 18
MAX_SCALE = 9
DOUBLE = "f64"
ENCODINGS = tuple(f"d{s}" for s in range(MAX_SCALE + 1)) + (DOUBLE,)
_NEGATIVE_ZERO = np.array(-0.0).view(np.int64)
_EXACT_LIMIT = 2 ** 53  # integers below this are exact in float64, so u / 10**s rounds once
_DICTIONARY = ("machine", "sensor", "topic", "reason", "event", "lot", "wafer", "recipe",
               "recipe_version", "writer", "kind", "rule", "state", "step")
_DELTA = ("ts", "received_at")


def cast_keeping_dictionaries(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` cast to `schema`, except that dictionary-encoded strings stay encoded where
    the schema has plain strings (Parquet stores both the same way)."""
    fields = []
    for target in schema:
        actual = table.schema.field(target.name).type
        keep = pa.types.is_dictionary(actual) and actual.value_type == target.type
        fields.append(pa.field(target.name, actual) if keep else target)
    return table.select(schema.names).cast(pa.schema(fields, metadata=schema.metadata))


def dictionary_columns(table: pa.Table) -> list[str]:
    return [f.name for f in table.schema if pa.types.is_dictionary(f.type)]


def _string_codes(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """A string column as int32 codes per row into an array of distinct values (a null is
    one of them). Dictionary columns give their codes without touching a string per row."""
    if isinstance(column, pa.ChunkedArray):
        if pa.types.is_dictionary(column.type) and column.num_chunks > 1:
            column = column.unify_dictionaries()  # one dictionary for all chunks
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if pa.types.is_dictionary(column.type) and not column.null_count:
        codes = column.indices.to_numpy()
        distinct = pc.dictionary_encode(column.dictionary)
        if len(distinct.dictionary) == len(column.dictionary):
            return codes, column.dictionary
        return distinct.indices.to_numpy()[codes], distinct.dictionary  # repeated entries
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    return encoded.indices.to_numpy(), encoded.dictionary


def _string_runs(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """A string column as maximal runs of one value: (run lengths, each run's value numbered
    in order of first appearance, the distinct values in that order). Equal for equal
    sequences however the column is encoded; a sorted column has few runs, so this costs
    about one integer comparison per row."""
    codes, values = _string_codes(column)
    if len(codes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), values.slice(0, 0)
    starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    lengths = np.diff(np.append(starts, len(codes)))
    numbered = pc.dictionary_encode(pa.array(codes[starts]))
    return lengths, numbered.indices.to_numpy(), values.take(numbered.dictionary)


def sort_dedup(table: pa.Table) -> pa.Table:
    """Sort by (machine, sensor, ts) and keep the first arrival of each key."""
    if table.num_rows == 0:
        return table
    if dictionary_columns(table):  # Arrow sorts plain strings only
        table = table.cast(pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type)
                                               else f.type) for f in table.schema]))
    table = table.take(pc.sort_indices(table, sort_keys=SORT_KEYS))  # stable: first arrival first
    same = None
    for name in ("machine", "sensor", "ts"):
        column = table.column(name)
        equal = pc.equal(column.slice(1), column.slice(0, table.num_rows - 1))
        same = equal if same is None else pc.and_(same, equal)
    keep = pa.concat_arrays([pa.array([True]), pc.invert(same).combine_chunks()])
    return table.filter(keep)


# ---- values -----------------------------------------------------------------------------
def scale_of(encoding: str) -> int | None:
    """The decimal scale of an encoding name, None for DOUBLE."""
    return None if encoding == DOUBLE else int(encoding[1:])


def value_type(encoding: str) -> pa.DataType:
    scale = scale_of(encoding)
    return pa.float64() if scale is None else pa.decimal128(18, scale)


def run_scales(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per run of rows (runs begin at `starts`), the smallest scale at which every value of
    the run is exact: the largest over the run of each value's smallest exact scale.

    Whole runs are tested one scale at a time with boolean masks instead of value by value
    with index arrays: a sensor's values share their resolution, so most runs settle on the
    first scale that fits, and a pass over ten million values takes tens of milliseconds."""
    values = np.asarray(values, dtype=np.float64)
    lengths = np.diff(np.append(starts, len(values)))
    result = np.full(len(starts), MAX_SCALE + 1, dtype=np.int8)
    # NaN, infinities and -0.0 are exact at no scale: their runs are settled at once
    # rather than tried at every scale.
    hopeless = ~np.isfinite(values) | (values.view(np.int64) == _NEGATIVE_ZERO)
    if len(values) and hopeless.any():
        doomed = np.logical_or.reduceat(hopeless, starts)
        open_runs = np.flatnonzero(~doomed)
        v = values[np.repeat(~doomed, lengths)]
    else:
        open_runs = np.arange(len(starts))  # runs not settled yet
        v = values
    with np.errstate(invalid="ignore", over="ignore"):
        for scale in range(MAX_SCALE + 1):
            if len(open_runs) == 0:
                break
            power = 10.0 ** scale
            unscaled = np.rint(v * power) + 0.0  # the integer has no sign of zero
            exact = (np.abs(unscaled) < _EXACT_LIMIT) & ((unscaled / power).view(np.int64) == v.view(np.int64))
            run_starts = np.concatenate([[0], np.cumsum(lengths[open_runs])[:-1]])
            settled = np.logical_and.reduceat(exact, run_starts) if len(v) else np.ones(0, bool)
            result[open_runs[settled]] = scale
            if settled.all():
                break
            v = v[np.repeat(~settled, lengths[open_runs])]
            open_runs = open_runs[~settled]
    return result


def to_decimal(values: np.ndarray, scale: int) -> pa.Array:
    """float64 values, each exact at `scale`, as decimal128(18, scale) (checked)."""
    unscaled = np.rint(np.asarray(values, np.float64) * 10.0 ** scale).astype(np.int64)
    if not np.array_equal((unscaled / 10.0 ** scale).view(np.int64), np.asarray(values, np.float64).view(np.int64)):
        raise ValueError(f"values are not exact at scale {scale}")
    # decimal128 is 16 bytes little-endian two's complement: low word, then the sign word.
    words = np.empty((len(unscaled), 2), dtype=np.int64)
    words[:, 0] = unscaled
    words[:, 1] = np.where(unscaled < 0, -1, 0)
    return pa.Array.from_buffers(pa.decimal128(18, scale), len(unscaled),
                                 [None, pa.py_buffer(words)])  # the array keeps `words` alive


def exact_float64(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A value column (double or decimal of at most 18 digits) as float64, bit-exact."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if pa.types.is_floating(column.type):
        return column.cast(pa.float64())
    if not pa.types.is_decimal(column.type):
        raise TypeError(f"value column of type {column.type} is not a number")
    if column.null_count:
        raise ValueError("value columns never hold nulls")
    if column.type.bit_width != 128:
        column = column.cast(pa.decimal128(38, column.type.scale))  # decimal32/64 become 128
    words = np.frombuffer(column.buffers()[1], dtype=np.int64)[2 * column.offset:2 * (column.offset + len(column))]
    unscaled = words[0::2]
    return pa.array(unscaled.astype(np.float64) / 10.0 ** column.type.scale, pa.float64())


def normalise_readings(table: pa.Table) -> pa.Table:
    """A readings table with `value` as float64 (exactly) and `ts` as ms UTC."""
    value = exact_float64(table.column("value"))
    table = table.set_column(table.schema.get_field_index("value"), "value", value)
    ts = table.column("ts")
    if ts.type != pa.timestamp("ms", tz="UTC"):
        table = table.set_column(table.schema.get_field_index("ts"), "ts", ts.cast(pa.timestamp("ms", tz="UTC")))
    return table


def split_by_encoding(readings: pa.Table) -> dict[str, pa.Table]:
    """Readings sorted by (machine, sensor) grouped by the encoding of their sensor: a
    sensor's rows all go into the group of its finest value, so each file holds whole
    sensors. Row order is kept. (Unsorted input is still stored exactly, but a sensor's
    runs may land in different groups.)"""
    if readings.num_rows == 0:
        return {}
    # Runs of one (machine, sensor): sorted input makes them contiguous, so no hashing of names.
    change = np.zeros(readings.num_rows, dtype=bool)
    change[0] = True
    for name in ("machine", "sensor"):
        codes, _ = _string_codes(readings.column(name))
        change[1:] |= codes[1:] != codes[:-1]
    starts = np.flatnonzero(change)
    worst = run_scales(readings.column("value").to_numpy(), starts)
    row_scale = np.repeat(worst, np.diff(np.append(starts, readings.num_rows)))
    groups = {}
    for scale in np.unique(row_scale).tolist():
        name = DOUBLE if scale > MAX_SCALE else f"d{scale}"
        groups[name] = readings.filter(pa.array(row_scale == scale))
    return groups


def encode_values(readings: pa.Table, encoding: str) -> pa.Table:
    """`readings` (float64 values) with the value column in `encoding`'s type."""
    scale = scale_of(encoding)
    if scale is None:
        return readings
    index = readings.schema.get_field_index("value")
    return readings.set_column(index, "value", to_decimal(readings.column("value").to_numpy(), scale))


# ---- bytes ------------------------------------------------------------------------------
def to_parquet_bytes(table: pa.Table) -> bytes:
    delta = [c for c in _DELTA if c in table.column_names]
    if "value" in table.column_names and pa.types.is_decimal(table.schema.field("value").type):
        delta.append("value")
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=3,
        use_dictionary=[c for c in _DICTIONARY if c in table.column_names],
        column_encoding={c: "DELTA_BINARY_PACKED" for c in delta},
        store_decimal_as_integer=True,
        row_group_size=ROW_GROUP_SIZE,
        write_statistics=True,
        coerce_timestamps="ms",
        allow_truncated_timestamps=False,
        # Dictionary-encoded names would otherwise be recorded as dictionary types in the
        # file's Arrow schema; without it every reader sees strings, as in every other file.
        store_schema=not dictionary_columns(table),
        # A CRC per page: a reader that checks them (lake verification) finds a damaged page
        # even in a file with no audited checksum.
        write_page_checksum=True,
    )
    return sink.getvalue().to_pybytes()


def from_parquet_bytes(data: bytes, dictionaries: list[str] | tuple[str, ...] = ()) -> pa.Table:
    """A Parquet file's table; the `dictionaries` columns read as dictionary arrays."""
    return pq.read_table(pa.BufferReader(data), read_dictionary=list(dictionaries) or None)


def checksum(table: pa.Table) -> str:
    """A digest of the readings' content, equal for equal rows in equal order.

    Strings are digested as runs of equal values (lengths, values numbered by first
    appearance, the distinct values), so dictionary-encoded and plain columns agree.

    Values are digested as the float64 they stand for (decimals converted exactly), so a
    decimal file and the doubles it was written from have the same checksum."""
    digest = hashlib.sha256()
    for name in table.column_names:
        column = table.column(name)
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            lengths, numbers, distinct = _string_runs(column)
            # `.data`: the arrays' buffers as memoryviews, the same bytes (numpy's stubs declare
            # ndarray a buffer only for Python >= 3.12)
            digest.update(lengths.astype(np.int64, copy=False).data)
            digest.update(numbers.astype(np.int32, copy=False).data)
            digest.update(np.asarray(distinct.is_null()).data)
            digest.update("\0".join(v or "" for v in distinct.to_pylist()).encode())
            continue
        column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_decimal(column.type):
            column = exact_float64(column)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
            if column.null_count:
                column = column.fill_null(0)
        digest.update(np.ascontiguousarray(column.to_numpy(zero_copy_only=False)).data)  # no copy if contiguous
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


def hour_bounds_ms(day: str, hour: str) -> tuple[int, int]:
    """[start, end) in epoch ms of the hour partition `date=day/hour=hour`."""
    start = int(np.datetime64(day, "ms").astype(np.int64)) + int(hour) * 3_600_000
    return start, start + 3_600_000
