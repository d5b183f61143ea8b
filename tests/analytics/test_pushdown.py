"""A time-bounded question over `readings` reads the files of its hours only: the filter on
`ts` (and on machine, sensor) reaches the lake's scan, and a file whose hour cannot match
is never opened."""

import duckdb
import pytest

from analytics.session import run_sql
from core.errors import SqlError
from fabtier.bench.query import HOUR_MS, CountingStore, _iso, _sources, build_lake
from tiers.cold import ColdLake

END_MS = 1_764_000_000_000 - 1_764_000_000_000 % HOUR_MS + 30 * 60_000


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pushdown") / "lake"
    build_lake(root, days=1, machines=2, sensors=2, rate_hz=0.05, seal_every_s=1800, end_ms=END_MS)
    return root


def _hour_of(path: str) -> str:
    return path.split("/raw/", 1)[1].rsplit("/", 1)[0]


H = END_MS - END_MS % HOUR_MS - 3 * HOUR_MS  # a whole hour in the middle of the day's lake


@pytest.mark.parametrize("where, hours", [
    (f"ts >= TIMESTAMP '{_iso(H)}' AND ts < TIMESTAMP '{_iso(H + HOUR_MS)}'", 1),
    (f"ts BETWEEN '{_iso(H)}' AND '{_iso(H + HOUR_MS - 1)}' AND machine = 'm01'", 1),
    (f"ts = TIMESTAMP '{_iso(H + 20_000)}' AND sensor = 's02'", 1),
    (f"ts > TIMESTAMP '{_iso(H + HOUR_MS)}' - INTERVAL 90 MINUTE AND ts < TIMESTAMP '{_iso(H + HOUR_MS)}'", 2),
])
def test_a_time_bounded_query_opens_only_the_files_of_its_hours(lake_root, where, hours):
    store = CountingStore(lake_root)
    lake = ColdLake(store, writer_id="bench")
    expected = run_sql(_sources(ColdLake(CountingStore(lake_root), writer_id="bench")),
                       "SELECT machine, sensor, epoch_ms(ts) AS ms, value FROM readings ORDER BY ALL")
    store.counter.reset()
    got = run_sql(_sources(lake), f"SELECT machine, sensor, epoch_ms(ts) AS ms, value FROM readings "
                                  f"WHERE {where} ORDER BY ALL")
    assert len({_hour_of(p) for p in store.counter.opened}) == hours
    # The same rows as filtering everything (read without the filter reaching the scan).
    con_rows = expected.to_pylist()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("everything", expected)
    same = con.execute(f"SELECT machine, sensor, ms, value FROM (SELECT *, make_timestamp(ms * 1000) AS ts "
                       f"FROM everything) WHERE {where} ORDER BY ALL").fetchall()
    assert len(con_rows) > len(same) > 0
    assert [tuple(r.values()) for r in got.to_pylist()] == same


def test_other_hours_unreadable_do_not_fail_a_query_bounded_to_good_hours(tmp_path):
    root = tmp_path / "lake"
    build_lake(root, days=0.25, machines=1, sensors=2, rate_hz=0.05, seal_every_s=1800, end_ms=END_MS)
    lake = ColdLake(CountingStore(root), writer_id="bench")
    good = END_MS - END_MS % HOUR_MS - HOUR_MS
    for f in lake.visible_files("raw"):
        if f"hour={int(good // HOUR_MS) % 24:02d}" not in f.key:
            (root / f.key).write_bytes(b"not parquet")
    rows = run_sql(_sources(lake), f"SELECT count(*) AS n FROM readings WHERE ts >= TIMESTAMP '{_iso(good)}' "
                                   f"AND ts < TIMESTAMP '{_iso(good + HOUR_MS)}'").column("n")[0].as_py()
    assert rows == 2 * 180
    with pytest.raises(SqlError):
        run_sql(_sources(lake), "SELECT count(*) FROM readings")


def test_explain_shows_the_filter_inside_the_arrow_scan(lake_root):
    lake = ColdLake(CountingStore(lake_root), writer_id="bench")
    plan = run_sql(_sources(lake), f"EXPLAIN SELECT count(*) FROM readings WHERE machine = 'm01' AND "
                                   f"ts >= TIMESTAMP '{_iso(H)}' AND ts < TIMESTAMP '{_iso(H + HOUR_MS)}'")
    text = "\n".join(str(v) for v in plan.column(1).to_pylist())
    # The scan's own filters (a Filter node above a scan would show CAST(ts ...) or ts >= '...').
    assert "PYTHON_ARROW_SCAN" in text and "Filters:" in text
    assert "(\"ts\" >= TIMESTAMP '" in text and "\"machine\" = 'm01'" in text


def test_readings_ts_stays_a_timestamp(lake_root):
    lake = ColdLake(CountingStore(lake_root), writer_id="bench")
    described = {r["column_name"]: r["column_type"] for r in run_sql(_sources(lake), "DESCRIBE readings").to_pylist()}
    assert described == {"machine": "VARCHAR", "sensor": "VARCHAR", "ts": "TIMESTAMP", "value": "DOUBLE"}
