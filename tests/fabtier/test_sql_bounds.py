"""A statement bounded in time lists only the lake's days it touches, answers as the unbounded
statement does, and names only the archived objects in its range."""

import datetime as dt

import pyarrow as pa

from analytics.bounds import ts_bounds
from analytics.leftout import left_out
from analytics.session import run_sql
from analytics.sources import raw_files, tier_sources
from lifecycle.audit import AUDIT_SCHEMA
from tiers.cold import ColdLake
from tiers.store import LocalStore
from tiers.unsealed import SegmentTables, tables_from_records

HOUR = 3_600_000
NOW = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
FIRST = NOW - NOW % HOUR - 5 * 24 * HOUR  # five days back, on an hour


class CountingStore:
    def __init__(self, store) -> None:
        self.store = store
        self.prefixes: list[str] = []

    def __getattr__(self, name):
        return getattr(self.store, name)

    def objects(self, prefix):
        self.prefixes.append(prefix)
        return self.store.objects(prefix)


def _lake(tmp_path):
    store = LocalStore(tmp_path / "lake")
    lake = ColdLake(store, writer_id="w0")
    ts = list(range(FIRST, NOW + 2 * HOUR, 20 * 60_000))  # every 20 minutes for six days
    table = pa.table({"machine": ["m01"] * len(ts), "sensor": ["s01"] * len(ts),
                      "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                      "value": [float(i) for i in range(len(ts))]})
    empty = _empty()
    lake.write_segment(1, SegmentTables(fresh=table, late=table.slice(0, 0), quarantine=empty.quarantine,
                                        context=empty.context, alerts=empty.alerts), "test")
    return store, lake


def _empty():
    return tables_from_records([])


def _sources(lake, sql, tmp_path, bounded=True):
    empty = _empty()
    return tier_sources(lake=lake, hidden=set(), unsealed=empty, audit=AUDIT_SCHEMA.empty_table(),
                        warm=None, data_dir=tmp_path, recipe_limits=None,
                        ts_bounds=ts_bounds(sql) if bounded else None)


def _day(ms):
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")


def test_one_hour_lists_only_its_day(tmp_path):
    store, _ = _lake(tmp_path)
    counting = CountingStore(store)
    lake = ColdLake(counting, writer_id="w0")
    start = FIRST + 2 * 24 * HOUR + 10 * HOUR
    lit = dt.datetime.fromtimestamp(start / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    sql = f"SELECT count(*) AS n FROM readings WHERE ts >= TIMESTAMP '{lit}' AND ts < TIMESTAMP '{lit}' + INTERVAL 1 HOUR"
    files = raw_files(lake, ts_bounds(sql))
    raw = [p for p in counting.prefixes if p.startswith("raw/")]
    assert raw and all(p.startswith("raw/date=") for p in raw)
    days = {p.split("date=")[1][:10] for p in raw}
    assert days <= {_day(start - HOUR), _day(start), _day(start + 2 * HOUR)} and _day(start) in days
    assert {f.hour for f in files} <= {f"{h:02d}" for h in range(24)} and len(files) <= 4
    counting.prefixes.clear()
    raw_files(lake, None)
    assert counting.prefixes == ["raw/"]


def test_bounded_answers_are_the_unbounded_ones(tmp_path):
    _, lake = _lake(tmp_path)
    day2 = dt.datetime.fromtimestamp((FIRST + 2 * 24 * HOUR) / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    statements = [
        "SELECT count(*) AS n, sum(value) AS s FROM readings WHERE ts >= now() - INTERVAL 5 MINUTE",
        "SELECT count(*) AS n, sum(value) AS s FROM readings WHERE ts >= now() - INTERVAL 3 HOUR AND ts < now()",
        "SELECT count(*) AS n FROM readings WHERE ts >= now()::TIMESTAMP - INTERVAL 1 DAY",
        "SELECT count(*) AS n FROM readings WHERE ts > current_date",
        "SELECT count(*) AS n, sum(value) AS s FROM readings WHERE ts >= CURRENT_TIMESTAMP - INTERVAL 3 HOUR "
        "AND ts < current_timestamp",
        "SELECT count(*) AS n FROM readings WHERE ts >= localtimestamp - INTERVAL 1 DAY",
        f"SELECT count(*) AS n, min(ts) AS a, max(ts) AS b FROM readings WHERE ts BETWEEN TIMESTAMP '{day2}' "
        f"AND TIMESTAMP '{day2}' + INTERVAL 26 HOUR",
        f"SELECT ts, value FROM readings r WHERE r.ts = TIMESTAMP '{day2}' ORDER BY ts",
        f"SELECT count(*) AS n FROM readings WHERE ts < TIMESTAMPTZ '{day2}+00' AND machine = 'm01'",
        f"SELECT count(*) AS n FROM readings WHERE ts > TIMESTAMP '{day2}' AND ts < TIMESTAMP '{day2}'"
        " - INTERVAL 1 DAY",
        "SELECT count(*) AS n FROM readings WHERE ts > TIMESTAMP '2000-01-01' AND ts < TIMESTAMP '2100-01-01'",
        "SELECT count(*) AS n FROM readings",
    ]
    for sql in statements:
        bounded = run_sql(_sources(lake, sql, tmp_path), sql).to_pylist()
        whole = run_sql(_sources(lake, sql, tmp_path, bounded=False), sql).to_pylist()
        assert bounded == whole, sql
    assert run_sql(_sources(lake, statements[0], tmp_path), statements[0]).to_pylist()[0]["n"] >= 0


def test_the_notice_names_only_archived_objects_in_range(tmp_path):
    store, lake = _lake(tmp_path)
    # `recent` ends two hours before the current hour began: a statement of the last 30 minutes
    # (bounds widened by an hour) never reaches it, whatever the minute of the hour now.
    old, recent = FIRST + 3 * HOUR, NOW - NOW % HOUR - 3 * HOUR
    for ms in (old, recent):
        hour = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%H")
        (key,) = [k for k, _ in store.list(f"raw/date={_day(ms)}/hour={hour}/")]
        store.set_storage_class(key, "GLACIER")
    everything = "SELECT count(*) AS n FROM readings"
    found = left_out(_sources(lake, everything, tmp_path).archived_raw, everything)
    assert found is not None and found.objects == 2
    sql = "SELECT count(*) AS n FROM readings WHERE ts >= now() - INTERVAL 4 HOUR"
    found = left_out(_sources(lake, sql, tmp_path).archived_raw, sql)
    assert found is not None and (found.objects, found.from_ms) == (1, recent)
    for clock in ("now()", "current_timestamp"):  # the standard's keyword bounds as now() does
        sql = f"SELECT count(*) AS n FROM readings WHERE ts >= {clock} - INTERVAL 30 MINUTE"
        assert left_out(_sources(lake, sql, tmp_path).archived_raw, sql) is None, clock


def test_the_warm_snapshot_is_given_only_to_a_question_it_can_answer(tmp_path):
    from analytics.bounds import minute_bounds
    from tiers.warm import MINUTES_SCHEMA, WarmStore

    _, lake = _lake(tmp_path)
    warm = WarmStore(tmp_path / "warm.duckdb")
    start = NOW - NOW % 60_000 - 30 * 60_000  # the last half hour, in the warm store
    warm.upsert(pa.Table.from_pylist(
        [dict(machine="m01", sensor="s01", minute=start + i * 60_000, n=1, min=1.0, max=1.0, avg=1.0, first=1.0,
              last=1.0) for i in range(30)], schema=MINUTES_SCHEMA))
    empty = _empty()

    def given(sql):
        src = tier_sources(lake=lake, hidden=set(), unsealed=empty, audit=AUDIT_SCHEMA.empty_table(), warm=warm,
                           data_dir=tmp_path, recipe_limits=None, ts_bounds=ts_bounds(sql),
                           minute_bounds=minute_bounds(sql))
        return src.warm_1m, run_sql(src, sql).column("n")[0].as_py()

    def lit(ms):
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    recent = f"SELECT count(*) AS n FROM readings_1m WHERE minute >= TIMESTAMP '{lit(start + 10 * 60_000)}'"
    table, n = given(recent)
    assert table is not None and n == 20
    older = f"SELECT count(*) AS n FROM readings_1m WHERE minute < TIMESTAMP '{lit(start)}'"
    table, n = given(older)
    assert table is None and n == 0  # no aggregate file in this lake: nothing before the warm minutes
    table, n = given("SELECT count(*) AS n FROM readings")
    assert table is None and n > 0  # no minute read at all
    table, n = given("SELECT count(*) AS n FROM readings_1h")
    assert table is not None and n == len({(start + i * 60_000) // HOUR for i in range(30)})
    warm.close()
