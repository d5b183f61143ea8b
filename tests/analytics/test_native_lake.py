"""A lake on local disk is read by DuckDB's own Parquet reader (analytics.session): the same
answers as through pyarrow, only the lake's raw and aggregate files in reach, and a file that
goes away between listing and reading is the store's failure, not the statement's."""

import dataclasses
import json
import os
import time

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from analytics.session import Session, run_sql
from core.errors import SqlError
from fabtier.bench.query import _iso, _sources, build_lake
from tiers.store import StoreError

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    end_ms = (int(time.time() * 1000) // HOUR_MS) * HOUR_MS - 7 * HOUR_MS // 2
    built, _, readings = build_lake(tmp_path_factory.mktemp("lake"), days=2, machines=2, sensors=3, rate_hz=0.1,
                                    seal_every_s=1800, end_ms=end_ms)
    return built, end_ms, readings


def _statements(end_ms):
    day = end_ms - end_ms % DAY_MS - DAY_MS
    hour = end_ms - end_ms % HOUR_MS - 2 * HOUR_MS
    # Sums as decimals: exact, whatever order the readers hand the rows in.
    return [
        "SELECT count(*) AS n, sum(value::DECIMAL(18, 2)) AS s FROM readings",
        "SELECT machine, sensor, count(*) AS n, min(ts) AS lo, max(ts) AS hi, sum(value::DECIMAL(18, 2)) AS s "
        "FROM readings GROUP BY ALL ORDER BY ALL",
        f"SELECT count(*) AS n, sum(value::DECIMAL(18, 2)) AS a FROM readings WHERE machine = 'm01' "
        f"AND ts >= TIMESTAMP '{_iso(hour)}' AND ts < TIMESTAMP '{_iso(hour + HOUR_MS)}'",
        f"SELECT sensor, count(*) AS n, sum(n) AS readings, max(\"max\") AS peak FROM readings_1m "
        f"WHERE machine = 'm02' AND minute >= TIMESTAMP '{_iso(day)}' AND minute < TIMESTAMP '{_iso(day + DAY_MS)}' "
        "GROUP BY ALL ORDER BY ALL",
        "SELECT count(*) AS n, sum(n) AS readings FROM readings_1h",
    ]


def test_duckdb_reading_the_lake_itself_answers_as_pyarrow_does(lake):
    built, end_ms, readings = lake
    assert run_sql(_sources(built), "SELECT count(*) AS n FROM readings").column("n")[0].as_py() == readings
    for sql in _statements(end_ms):
        sources = _sources(built, sql)
        assert sources.lake_dir is not None
        native = run_sql(sources, sql)
        through_arrow = run_sql(dataclasses.replace(sources, lake_dir=None), sql)
        assert native.num_rows > 0 and native.to_pylist() == through_arrow.to_pylist(), sql


def test_a_statement_reaches_the_lakes_files_only_through_the_views(lake, tmp_path):
    built, _, _ = lake
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    sources = _sources(built)
    lake_file = sources.cold_raw[0].files[0]
    for sql in (f"SELECT * FROM read_csv('{outside}')", "SELECT * FROM read_text('/etc/hostname')",
                f"SELECT count(*) FROM read_parquet('{sources.lake_dir}/raw/**/*.parquet')",
                f"SELECT count(*) FROM '{lake_file}'",
                f"SELECT * FROM readings WHERE ts IN (SELECT ts FROM parquet_scan('{lake_file}'))"):
        with pytest.raises(SqlError, match="not part of the SQL surface|names a file"):
            run_sql(sources, sql)
    # DuckDB's own guard stands behind: outside the lake's data directories, nothing opens.
    session = Session(lake_dir=sources.lake_dir)
    session.bind(sources)
    with pytest.raises(duckdb.Error, match="disabled by configuration|Permission"):
        session.con.execute(f"SELECT * FROM read_csv('{outside}')").fetchall()
    assert session.con.execute(f"SELECT count(*) FROM '{lake_file}'").fetchall()[0][0] > 0
    session.close()
    # Functions that read no file still work.
    assert run_sql(sources, "SELECT sum(range) AS s FROM range(4)").column("s")[0].as_py() == 6


def test_a_file_gone_between_listing_and_reading_is_a_store_failure(lake, tmp_path):
    built, _, _ = lake
    sources = _sources(built)
    victim = sources.cold_raw[0].files[0]
    kept = victim + ".kept"
    os.rename(victim, kept)
    try:
        with pytest.raises(StoreError, match="could not be read"):
            run_sql(sources, "SELECT count(*) FROM readings")
    finally:
        os.rename(kept, victim)


def _parquet_scans(plan: list[dict]) -> list[dict]:
    """Every Parquet scan of an `EXPLAIN (FORMAT json)` plan."""
    found = []
    for node in plan:
        if node["name"] == "READ_PARQUET":
            found.append(node)
        found.extend(_parquet_scans(node["children"]))
    return found


def test_a_count_of_every_reading_reads_no_column_of_the_lake(lake):
    """count(*) over the union of two lake parts and unsealed rows reads only the files'
    footers (DuckDB otherwise reads the union's first column, machine, from every lake row),
    and still counts every row; a statement that needs a column reads it."""
    built, _, readings = lake
    sources = _sources(built)
    files = sources.cold_raw[0].files
    assert len(files) > 2
    halves = [ds.dataset(files[:2], format="parquet"), ds.dataset(files[2:], format="parquet")]
    fresh = pa.table({"machine": ["m01", "m02"], "sensor": ["s1", "s1"],
                      "ts": pa.array([1_000, 2_000], pa.timestamp("ms", tz="UTC")), "value": [1.0, 2.0]},
                     schema=sources.hot_fresh.schema)
    both = dataclasses.replace(sources, cold_raw=halves, hot_fresh=fresh)
    assert run_sql(both, "SELECT count(*) AS n FROM readings").column("n")[0].as_py() == readings + 2
    session = Session(lake_dir=both.lake_dir)
    try:
        session.bind(both)

        def lake_projections(sql: str) -> list[str]:
            plan = json.loads(session.con.execute(f"EXPLAIN (FORMAT json) {sql}").fetchall()[0][1])
            return [s["extra_info"].get("Projections", "") for s in _parquet_scans(plan)]

        assert lake_projections("SELECT count(*) FROM readings") == ["", ""]
        assert lake_projections("SELECT count(*) FROM cold_raw") == ["", ""]
        assert lake_projections("SELECT max(value) FROM readings") == ["value", "value"]
    finally:
        session.close()
