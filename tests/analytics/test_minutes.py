"""`readings_1m` is built for what a snapshot holds (analytics.minutes): the warm store's
minutes, the lake's, both apart, or both with minutes in common (the warm one wins). A reused
session must answer every snapshot as if its view were the full one."""

import dataclasses
import time

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from analytics.minutes import Shape, minute_range, shape, warm_may_hold
from analytics.session import run_sql
from fabtier.bench.query import _iso, _sources, build_lake
from tiers.catalog import FileStats
from tiers.warm import MINUTES_SCHEMA

from .test_session import sources

MIN_MS = 60_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % MIN_MS


def minutes(rows):
    """(machine, sensor, minute ms, value) -> rows of MINUTES_SCHEMA with n = 1."""
    return pa.Table.from_pylist(
        [dict(machine=m, sensor=s, minute=t, n=1, min=v, max=v, avg=v, first=v, last=v) for m, s, t, v in rows],
        schema=MINUTES_SCHEMA)


def expected(warm_rows, lake_rows):
    """What readings_1m must hold: every minute once, the warm store's where both have it."""
    merged = {(m, s, t): v for m, s, t, v in lake_rows}
    merged.update({(m, s, t): v for m, s, t, v in warm_rows})
    return sorted((m, s, t, v) for (m, s, t), v in merged.items())


def answer(src):
    table = run_sql(src, "SELECT machine, sensor, epoch_ms(minute) AS t, \"avg\" AS v FROM readings_1m ORDER BY ALL")
    return [(r["machine"], r["sensor"], r["t"], r["v"]) for r in table.to_pylist()]


def test_minute_range_and_warm_bounds():
    table = minutes([("m", "s", T0 + 5 * MIN_MS, 1.0), ("m", "s", T0, 2.0), ("n", "s", T0 + 2 * MIN_MS, 3.0)])
    assert minute_range(table) == (T0, T0 + 5 * MIN_MS)
    assert minute_range(minutes([])) is None
    assert warm_may_hold(table, None) and warm_may_hold(table, (T0 + 5 * MIN_MS, None))
    assert warm_may_hold(table, (None, T0)) and warm_may_hold(table, (T0 + MIN_MS, T0 + MIN_MS))
    assert not warm_may_hold(table, (T0 + 5 * MIN_MS + 1, None))
    assert not warm_may_hold(table, (None, T0 - 1))
    assert not warm_may_hold(minutes([]), None)


def test_the_shape_from_the_files_statistics(tmp_path):
    warm = minutes([("m", "s", T0 + 10 * MIN_MS, 1.0)])
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.parquet"
        path.write_bytes(b"")  # never opened: the shape is decided from the statistics
        paths.append(str(path))
    lake = ds.FileSystemDataset.from_paths(paths, schema=MINUTES_SCHEMA, format=ds.ParquetFileFormat(),
                                           filesystem=pa.fs.LocalFileSystem())
    before = FileStats(rows=1, t_min_ms=T0, t_max_ms=T0 + 9 * MIN_MS)
    touching = FileStats(rows=1, t_min_ms=T0 + 10 * MIN_MS, t_max_ms=T0 + 20 * MIN_MS)
    assert shape(warm, lake, {paths[0]: before, paths[1]: before}) is Shape.DISJOINT
    assert shape(warm, lake, {paths[0]: before, paths[1]: touching}) is Shape.OVERLAPPING
    assert shape(warm, lake, {paths[0]: before}) is Shape.OVERLAPPING  # b's minutes unknown
    assert shape(None, lake, {}) is Shape.LAKE
    assert shape(minutes([]), lake, {}) is Shape.LAKE
    assert shape(warm, None, {}) is Shape.WARM
    empty = ds.FileSystemDataset.from_paths([], schema=MINUTES_SCHEMA, format=ds.ParquetFileFormat(),
                                            filesystem=pa.fs.LocalFileSystem())
    assert shape(warm, empty, {}) is Shape.WARM


LAKE = [("m", "s", T0 + i * MIN_MS, float(i)) for i in range(5)] + [("n", "s", T0 + 2 * MIN_MS, 20.0)]
SNAPSHOTS = [
    ([], LAKE),  # the lake's alone
    ([("m", "s", T0 + 7 * MIN_MS, 70.0)], []),  # the warm store's alone
    ([("m", "s", T0 + 7 * MIN_MS, 70.0), ("n", "s", T0 + 9 * MIN_MS, 90.0)], LAKE),  # apart
    # in common: minutes 3 and 4 of m recomputed after they aged out; n's minute 2 only in the lake
    ([("m", "s", T0 + 3 * MIN_MS, 33.0), ("m", "s", T0 + 4 * MIN_MS, 44.0), ("m", "s", T0 + 5 * MIN_MS, 55.0)], LAKE),
    # the same minute, another sensor's: not in common
    ([("m", "t", T0 + 2 * MIN_MS, 22.0)], LAKE),
    ([], []),
]


def test_a_reused_session_answers_every_shape_of_minutes():
    for warm_rows, lake_rows in SNAPSHOTS * 2:  # twice: each shape follows another one
        src = dataclasses.replace(sources(), warm_1m=minutes(warm_rows), cold_agg_1m=minutes(lake_rows))
        assert answer(src) == expected(warm_rows, lake_rows), (warm_rows, lake_rows)
        hours = run_sql(src, "SELECT sum(n) AS n, max(\"max\") AS peak FROM readings_1h").to_pylist()[0]
        want = expected(warm_rows, lake_rows)
        assert hours["n"] == (len(want) or None)
        assert hours["peak"] == (max(v for *_, v in want) if want else None)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    end_ms = (int(time.time() * 1000) // 3_600_000) * 3_600_000 - 3_600_000
    built, _, _ = build_lake(tmp_path_factory.mktemp("lake"), days=2, machines=2, sensors=2, rate_hz=0.05,
                             seal_every_s=3600, end_ms=end_ms)
    return built, end_ms


def test_the_lakes_files_and_the_warm_store_on_disk(lake):
    # The lake's aggregate files read by DuckDB itself, their minutes known from the catalog:
    # a warm minute that a file also holds wins over it; one the files cannot hold is added.
    built, end_ms = lake
    sql = "SELECT machine, sensor, epoch_ms(minute) AS t, \"avg\" AS v FROM readings_1m ORDER BY ALL"
    src = _sources(built, sql)
    assert src.lake_dir is not None and src.cold_agg_1m_bounds
    on_disk = [(r["machine"], r["sensor"], r["t"], r["v"]) for r in run_sql(src, sql).to_pylist()]
    first, last = on_disk[0], on_disk[-1]
    later = last[2] + 30 * MIN_MS
    for warm_rows in ([(first[0], first[1], first[2], -1.0), (last[0], last[1], later, -2.0)],  # one in common
                      [(last[0], last[1], later, -2.0)],  # none in common
                      []):
        got = [(r["machine"], r["sensor"], r["t"], r["v"])
               for r in run_sql(dataclasses.replace(src, warm_1m=minutes(warm_rows)), sql).to_pylist()]
        assert got == expected(warm_rows, on_disk)
    day = end_ms - end_ms % 86_400_000
    question = (f"SELECT count(*) AS n FROM readings_1m WHERE minute >= TIMESTAMP '{_iso(day)}'")
    assert run_sql(_sources(built, question), question).column("n")[0].as_py() == sum(
        1 for row in on_disk if row[2] >= day)
