"""Per-minute rollups over Arrow tables. Pure: no I/O, no clock.

The exactness rule: a minute is always computed from *all* raw readings of that minute, never
folded incrementally into an earlier result. A reading that arrives late, or twice, only
marks its minute as touched; the minute is then recomputed from the final raw data, so the
stored aggregate equals what a rollup over the final raw data gives, whatever the arrival
order.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from tiers import parquetformat as fmt
from tiers.warm import MINUTES_SCHEMA

MINUTE_MS = 60_000
KEY = ["machine", "sensor", "minute"]
_MINUTE_TYPE = pa.timestamp("ms", tz="UTC")
_COUNTS_SCHEMA = pa.schema([("machine", pa.string()), ("sensor", pa.string()), ("minute", _MINUTE_TYPE),
                            ("n", pa.int64())])


def minute_column(ts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The UTC minute each timestamp falls in, as a millisecond timestamp."""
    ms = pc.cast(ts, pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    floored = pc.multiply(pc.divide(ms, pa.scalar(MINUTE_MS, pa.int64())), pa.scalar(MINUTE_MS, pa.int64()))
    # Integer division truncates toward zero; readings before 1970 would need a floor.
    return floored.cast(_MINUTE_TYPE)


def touched_counts(readings: pa.Table) -> pa.Table:
    """The distinct (machine, sensor, minute) keys that these readings fall in, with `n`, how
    many of these readings each has (repeats counted): what recomputing it reads, at least."""
    keys = pa.table({
        "machine": readings.column("machine"),
        "sensor": readings.column("sensor"),
        "minute": minute_column(readings.column("ts")),
    })
    if keys.num_rows == 0:
        return _COUNTS_SCHEMA.empty_table()
    grouped = keys.group_by(KEY).aggregate([("minute", "count")])
    return grouped.rename_columns([*KEY, "n"]).select([*KEY, "n"]).cast(_COUNTS_SCHEMA)


def merge_counts(parts: list[pa.Table]) -> pa.Table:
    """The `touched_counts` of several parts of the same readings, as one."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return _COUNTS_SCHEMA.empty_table()
    grouped = pa.concat_tables(parts).group_by(KEY).aggregate([("n", "sum")])
    return grouped.rename_columns([*KEY, "n"]).select([*KEY, "n"]).cast(_COUNTS_SCHEMA)


def read_chunks(touched: pa.Table, limit: int) -> list[pa.Table]:
    """`touched` (with `n`) cut into parts that can each be recomputed from about `limit` raw
    readings or fewer, by the counts in `n`: whole machines packed together, and a machine
    whose readings alone are more than `limit` cut by sensor. A part's keys are those of whole
    (machine, sensor) pairs, so a part reads every reading of its keys' minutes, and each
    minute is computed from all its readings, as in one pass over everything.

    A part's machines and sensors are the filter of its read; packing whole machines keeps
    that filter from taking in other parts' readings (sensor names repeat across machines).
    A single pair of more than `limit` readings is a part of its own."""
    if touched.num_rows == 0:
        return []
    pairs = touched.group_by(["machine", "sensor"]).aggregate([("n", "sum")])
    pairs = pairs.take(pc.sort_indices(pairs, sort_keys=[("machine", "ascending"), ("sensor", "ascending")]))
    machines = pairs.column("machine").to_pylist()
    counts = pairs.column("n_sum").to_pylist()
    chunk_of = [0] * len(machines)  # the part each (machine, sensor) pair goes to
    chunk, chunk_n, start = -1, limit + 1, 0  # limit + 1: the first pair opens a part
    while start < len(machines):
        end = start
        while end < len(machines) and machines[end] == machines[start]:
            end += 1
        machine_n = sum(counts[start:end])
        if machine_n > limit:  # this machine alone is too big: by sensor, in parts of its own
            chunk_n = limit + 1
            for i in range(start, end):
                if chunk_n + counts[i] > limit and chunk_n > 0:
                    chunk, chunk_n = chunk + 1, 0
                chunk_of[i] = chunk
                chunk_n += counts[i]
            chunk_n = limit + 1  # nothing joins a part of a split machine
        else:
            if chunk_n + machine_n > limit:
                chunk, chunk_n = chunk + 1, 0
            chunk_of[start:end] = [chunk] * (end - start)
            chunk_n += machine_n
        start = end
    numbered = pa.table({"machine": pairs.column("machine"), "sensor": pairs.column("sensor"),
                         "part": pa.array(chunk_of, pa.int64())})
    keys = touched.select(KEY).join(numbered, keys=["machine", "sensor"], join_type="inner")
    part = keys.column("part")
    parts = (keys.filter(pc.equal(part, c)).select(KEY) for c in range(chunk + 1))
    return [p for p in parts if p.num_rows]


# Partial aggregates of a run of readings with no key twice (a batch of one lake file: files
# are sorted by (machine, sensor, ts) and deduplicated). They merge exactly into a minute's
# aggregates when the runs of a minute do not overlap in time; when two do, the minute may hold
# a reading twice (late data, two writers) and is recomputed from its raw rows instead.
PARTIAL_SCHEMA = pa.schema([
    ("machine", pa.string()), ("sensor", pa.string()), ("minute", _MINUTE_TYPE), ("n", pa.int64()),
    ("sum", pa.float64()), ("min", pa.float64()), ("max", pa.float64()),
    ("ts_min", _MINUTE_TYPE), ("ts_max", _MINUTE_TYPE), ("first", pa.float64()), ("last", pa.float64()),
])


def partial_minutes(run: pa.Table) -> pa.Table:
    """n, sum, min, max, time range, and first and last value of every minute of `run`, a run
    of readings in (machine, sensor, ts) order with no key twice (a batch of a lake file)."""
    if run.num_rows == 0:
        return PARTIAL_SCHEMA.empty_table()
    keyed = pa.table({"machine": run.column("machine"), "sensor": run.column("sensor"),
                      "minute": minute_column(run.column("ts")), "ts": run.column("ts"),
                      "value": run.column("value")})
    # use_threads=False: first and last in row order, i.e. of the earliest and latest reading.
    grouped = keyed.group_by(KEY, use_threads=False).aggregate([
        ("value", "count"), ("value", "sum"), ("value", "min"), ("value", "max"), ("ts", "min"), ("ts", "max"),
        ("value", "first"), ("value", "last")])
    return pa.table({
        "machine": grouped.column("machine"), "sensor": grouped.column("sensor"), "minute": grouped.column("minute"),
        "n": grouped.column("value_count"), "sum": grouped.column("value_sum"),
        "min": grouped.column("value_min"), "max": grouped.column("value_max"),
        "ts_min": grouped.column("ts_min"), "ts_max": grouped.column("ts_max"),
        "first": grouped.column("value_first"), "last": grouped.column("value_last"),
    }).cast(PARTIAL_SCHEMA)


def merge_partials(partials: list[pa.Table]) -> tuple[pa.Table, pa.Table]:
    """The minutes of these partial aggregates (of runs that together are every raw reading
    of those minutes), and the keys (with `n`) of minutes whose runs overlap in time: those
    may hold a reading twice and must be computed from their raw rows (`aggregate_minutes`).

    n, min, max, first and last are exact; avg is the sum of the runs' sums over n, which can
    differ from a single pass over the rows in the last bits (floating-point addition is not
    associative), well within 1e-12 relative."""
    parts = [p for p in partials if p.num_rows]
    if not parts:
        return MINUTES_SCHEMA.empty_table(), _COUNTS_SCHEMA.empty_table()
    runs = pa.concat_tables(parts)
    runs = runs.take(pc.sort_indices(runs, sort_keys=[*((k, "ascending") for k in KEY), ("ts_min", "ascending")]))
    # Sorted by start, runs of a key overlap if and only if some run starts before the one
    # before it ends.
    same_key = None
    for name in KEY:
        column = runs.column(name)
        equal = pc.equal(column.slice(1), column.slice(0, runs.num_rows - 1))
        same_key = equal if same_key is None else pc.and_(same_key, equal)
    assert same_key is not None
    starts_early = pc.less_equal(runs.column("ts_min").slice(1), runs.column("ts_max").slice(0, runs.num_rows - 1))
    overlapping = pc.and_(same_key, starts_early)
    if pc.any(overlapping).as_py():
        flagged = runs.slice(1).filter(overlapping).select(KEY)
        overlap_keys = flagged.group_by(KEY).aggregate([])
        counts = runs.group_by(KEY).aggregate([("n", "sum")]).rename_columns([*KEY, "n"])
        overlap = counts.join(overlap_keys, keys=KEY, join_type="left semi").select([*KEY, "n"]).cast(_COUNTS_SCHEMA)
        runs = runs.join(overlap_keys, keys=KEY, join_type="left anti")
        runs = runs.take(pc.sort_indices(runs, sort_keys=[*((k, "ascending") for k in KEY), ("ts_min", "ascending")]))
    else:
        overlap = _COUNTS_SCHEMA.empty_table()
    grouped = runs.group_by(KEY, use_threads=False).aggregate([
        ("n", "sum"), ("sum", "sum"), ("min", "min"), ("max", "max"), ("first", "first"), ("last", "last")])
    n = grouped.column("n_sum")
    minutes = pa.table({
        "machine": grouped.column("machine"), "sensor": grouped.column("sensor"), "minute": grouped.column("minute"),
        "n": n, "min": grouped.column("min_min"), "max": grouped.column("max_max"),
        "avg": pc.divide(grouped.column("sum_sum"), pc.cast(n, pa.float64())),
        "first": grouped.column("first_first"), "last": grouped.column("last_last"),
    }).cast(MINUTES_SCHEMA)
    return sort_minutes(minutes), overlap


def aggregate_minutes(readings: pa.Table) -> pa.Table:
    """n, min, max, avg, first and last (by ts) of every minute of these readings.

    Readings are identified by (machine, sensor, ts): a key given more than once counts once,
    with its first arrival's value (the lake's own rule), so overlapping inputs are harmless.
    """
    if readings.num_rows == 0:
        return MINUTES_SCHEMA.empty_table()
    ordered = fmt.sort_dedup(readings.select(["machine", "sensor", "ts", "value"]))
    ordered = ordered.append_column("minute", minute_column(ordered.column("ts")))
    # use_threads=False keeps the (machine, sensor, ts) order inside each group, which is
    # what makes "first" and "last" the values of the earliest and latest reading.
    grouped = ordered.group_by(KEY, use_threads=False).aggregate([
        ("value", "count"), ("value", "min"), ("value", "max"), ("value", "mean"),
        ("value", "first"), ("value", "last"),
    ])
    result = pa.table({
        "machine": grouped.column("machine"),
        "sensor": grouped.column("sensor"),
        "minute": grouped.column("minute"),
        "n": grouped.column("value_count"),
        "min": grouped.column("value_min"),
        "max": grouped.column("value_max"),
        "avg": grouped.column("value_mean"),
        "first": grouped.column("value_first"),
        "last": grouped.column("value_last"),
    }).cast(MINUTES_SCHEMA)
    return sort_minutes(result)


def only_keys(minutes: pa.Table, keys: pa.Table) -> pa.Table:
    """The rows of `minutes` whose (machine, sensor, minute) is in `keys`."""
    if minutes.num_rows == 0 or keys.num_rows == 0:
        return MINUTES_SCHEMA.empty_table()
    kept = minutes.join(keys.select(KEY).cast(pa.schema([MINUTES_SCHEMA.field(k) for k in KEY])),
                        keys=KEY, join_type="left semi")
    return sort_minutes(kept.select(MINUTES_SCHEMA.names).cast(MINUTES_SCHEMA))


def merge_minutes(old: pa.Table, new: pa.Table) -> pa.Table:
    """`old` with every minute that `new` has replaced by `new`'s row (newer computations win)."""
    old = old.select(MINUTES_SCHEMA.names).cast(MINUTES_SCHEMA)
    new = new.select(MINUTES_SCHEMA.names).cast(MINUTES_SCHEMA)
    if old.num_rows and new.num_rows:
        old = old.join(new.select(KEY), keys=KEY, join_type="left anti").select(MINUTES_SCHEMA.names)
    return sort_minutes(pa.concat_tables([old.cast(MINUTES_SCHEMA), new]))


def sort_minutes(minutes: pa.Table) -> pa.Table:
    if minutes.num_rows == 0:
        return minutes
    return minutes.take(pc.sort_indices(minutes, sort_keys=[(k, "ascending") for k in KEY]))


def hours_of(minutes: pa.Table) -> list[tuple[str, str, int, int]]:
    """(day, hour, first_ms, end_ms) of every UTC hour these minutes fall in, oldest first:
    the raw partitions (`raw/date=D/hour=H/`) to read to recompute them."""
    if minutes.num_rows == 0:
        return []
    ms = minutes.column("minute").cast(pa.int64())
    hours = sorted(set(pc.divide(ms, pa.scalar(3_600_000, pa.int64())).to_pylist()))
    result = []
    for hour in hours:
        stamp = pa.scalar(hour * 3_600_000, pa.int64()).cast(_MINUTE_TYPE).as_py()
        result.append((stamp.strftime("%Y-%m-%d"), stamp.strftime("%H"), hour * 3_600_000,
                       (hour + 1) * 3_600_000))
    return result
