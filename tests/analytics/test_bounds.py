"""analytics.bounds: the time range of a statement, used to list only the lake's days it touches.
The bounds must contain the ts of every row the statement returns, checked against DuckDB."""

import datetime as dt

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.bounds import MARGIN_MS, ts_bounds
from analytics.parsetree import connection

NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
START = NOW - dt.timedelta(days=5)


@pytest.fixture(scope="module")
def con():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # Every 7 minutes and 13 seconds over ten days around now: crosses every hour and day.
    con.execute("CREATE TABLE readings AS SELECT 'm01' AS machine, 's01' AS sensor, "
                "ts::TIMESTAMP AS ts, 1.0 AS value FROM range(?::TIMESTAMP, ?::TIMESTAMP, INTERVAL 433 SECOND) t(ts)",
                [START, NOW + dt.timedelta(days=5)])
    yield con
    con.close()


def _check(con, sql):
    bounds = ts_bounds(sql)
    assert bounds is not None, sql
    lo, hi = bounds
    rows = con.execute(f"SELECT epoch_ms(ts) FROM ({sql})").fetchall()
    assert rows, sql  # the statements here all match something
    for (ms,) in rows:
        assert lo is None or ms >= lo, sql
        assert hi is None or ms <= hi, sql
    return bounds


def _lit(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


OPS = [">=", ">", "<=", "<"]


@settings(max_examples=60, deadline=None)
@given(a=st.integers(0, 10 * 86_400_000), width=st.integers(1_000, 3 * 86_400_000),
       form=st.sampled_from(["timestamp", "string", "tz", "tz_offset", "flipped", "between", "alias", "ns"]),
       extra=st.booleans())
def test_bounds_contain_every_returned_row(con, a, width, form, extra):
    lo = START + dt.timedelta(milliseconds=a)
    hi = lo + dt.timedelta(milliseconds=width)
    col = "r.ts" if form == "alias" else "ts"
    if form in ("timestamp", "alias"):
        where = f"{col} >= TIMESTAMP '{_lit(lo)}' AND {col} < TIMESTAMP '{_lit(hi)}'"
    elif form == "string":
        where = f"ts > '{_lit(lo)}' AND ts <= '{_lit(hi)}'"
    elif form == "tz":
        where = f"ts >= TIMESTAMPTZ '{_lit(lo)}+00' AND ts <= TIMESTAMPTZ '{_lit(hi)}+00'"
    elif form == "tz_offset":  # the same moments, written in another zone
        where = (f"ts >= TIMESTAMPTZ '{_lit(lo + dt.timedelta(hours=5))}+05' "
                 f"AND ts <= TIMESTAMPTZ '{_lit(hi - dt.timedelta(hours=3))}-03'")
    elif form == "flipped":
        where = f"TIMESTAMP '{_lit(lo)}' <= ts AND TIMESTAMP '{_lit(hi)}' > ts"
    elif form == "ns":
        where = f"ts BETWEEN TIMESTAMP_NS '{_lit(lo)}' AND TIMESTAMP_NS '{_lit(hi)}'"
    else:
        where = f"ts BETWEEN TIMESTAMP '{_lit(lo)}' AND '{_lit(hi)}'"
    if extra:
        where = f"machine = 'm01' AND ({where}) AND value > 0" if form != "between" else f"value > 0 AND {where}"
    sql = f"SELECT ts FROM readings {'r ' if form == 'alias' else ''}WHERE {where}"
    rows = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
    bounds = ts_bounds(sql)
    if rows:
        _check(con, sql)
    if "(" not in where:  # a plain conjunction: bounded on both sides, near the literals
        assert bounds is not None and bounds[0] is not None and bounds[1] is not None
        assert bounds[0] >= int(lo.replace(tzinfo=dt.UTC).timestamp() * 1000) - 2 * 3_600_000


@pytest.mark.parametrize("sql", [
    "SELECT ts FROM readings WHERE ts >= now() - INTERVAL 5 MINUTE",
    "SELECT ts FROM readings WHERE ts >= now()::TIMESTAMP - INTERVAL 2 HOUR AND ts < now() + INTERVAL 1 DAY",
    "SELECT ts FROM readings WHERE ts >= current_date",
    "SELECT ts FROM readings WHERE ts > current_timestamp - INTERVAL '3 days' AND ts <= current_timestamp",
    "SELECT ts FROM readings WHERE ts = (SELECT 1) IS NOT NULL OR ts > now()",  # OR-less AND? no: falls back
    "SELECT ts FROM readings WHERE ts BETWEEN DATE '2000-01-01' AND now()",
    "SELECT ts, count(*) OVER () FROM readings WHERE machine = 'm01' AND ts < now() + INTERVAL 1 HOUR "
    "ORDER BY ts LIMIT 5000",
    "EXPLAIN SELECT ts FROM readings WHERE ts > now() - INTERVAL 1 DAY",
])
def test_now_relative_statements(con, sql):
    if ts_bounds(sql) is None:
        return  # allowed: no pruning
    if sql.startswith("EXPLAIN"):
        sql = sql[len("EXPLAIN "):]
    _check(con, sql)


def test_exact_values():
    lo, hi = ts_bounds("SELECT * FROM readings WHERE ts >= TIMESTAMP '2026-01-01 10:00' "
                       "AND ts < TIMESTAMP '2026-01-01 11:00'")
    start = int(dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC).timestamp() * 1000)
    assert lo == start and hi == start + 3_600_000 - 1  # literals to the ms: exact
    lo, hi = ts_bounds("SELECT * FROM readings WHERE ts > TIMESTAMP '2026-01-01 10:00' "
                       "AND ts <= TIMESTAMP '2026-01-01 11:00:00.0005'")
    assert lo == start + 1 and hi == start + 3_600_000 + 1 + MARGIN_MS  # below the ms: widened
    lo, hi = ts_bounds("SELECT * FROM readings WHERE ts < TIMESTAMPTZ '2026-01-01 12:00+02'")
    assert lo is None and hi == start + MARGIN_MS
    lo, hi = ts_bounds("SELECT * FROM readings WHERE ts >= now() - INTERVAL 5 MINUTE")
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    assert hi is None and now - MARGIN_MS - 6 * 60_000 < lo <= now - MARGIN_MS - 5 * 60_000 + 1000


@pytest.mark.parametrize("sql", [
    "SELECT * FROM readings",
    "SELECT * FROM readings WHERE machine = 'm01'",
    "SELECT * FROM readings WHERE ts >= TIMESTAMP '2026-01-01' OR machine = 'm01'",
    "SELECT * FROM readings WHERE date_trunc('hour', ts) = TIMESTAMP '2026-01-01'",
    "SELECT * FROM readings WHERE ts + INTERVAL 1 HOUR > TIMESTAMP '2026-01-01'",
    "SELECT * FROM readings a JOIN readings b USING (machine) WHERE a.ts > TIMESTAMP '2026-01-01'",
    "SELECT * FROM readings, alerts WHERE readings.ts > TIMESTAMP '2026-01-01'",
    "WITH r AS (SELECT * FROM readings) SELECT * FROM r WHERE ts > TIMESTAMP '2026-01-01'",
    "SELECT * FROM (SELECT * FROM readings) WHERE ts > TIMESTAMP '2026-01-01'",
    "SELECT * FROM readings WHERE ts > TIMESTAMP '2026-01-01' UNION ALL SELECT * FROM readings",
    "SELECT *, (SELECT count(*) FROM readings) FROM readings WHERE ts > TIMESTAMP '2026-01-01'",
    "SELECT * FROM readings WHERE ts > (SELECT max(ts) FROM readings)",
    "SELECT * FROM readings WHERE ts > value",
    "SELECT * FROM readings WHERE ts > now() - random() * INTERVAL 1 DAY",
    "SELECT * FROM readings WHERE ts >= '2026' || '-01-01'",
    "SELECT * FROM main.readings WHERE ts > TIMESTAMP '2026-01-01'",
    "SELECT * FROM readings USING SAMPLE 10 WHERE ts > TIMESTAMP '2026-01-01'",
    "SELECT * FROM readings WHERE ts <> TIMESTAMP '2026-01-01'",
    "SELECT * FROM readings WHERE NOT (ts < TIMESTAMP '2026-01-01')",
    "SELECT * FROM readings WHERE ts NOT BETWEEN TIMESTAMP '2026-01-01' AND TIMESTAMP '2026-01-02'",
    "SELECT * FROM readings WHERE ts > 'not a time'",
    "SELECT * FROM readings WHERE ts > ?",
    # DuckDB binds the keyword to the select list's alias (ts >= ts), not to the clock
    "SELECT ts AS current_timestamp FROM readings WHERE ts >= current_timestamp - INTERVAL 1 HOUR",
    "SELEC nonsense",
    "INSERT INTO readings VALUES ('a', 'b', TIMESTAMP '2026-01-01', 1)",
])
def test_none_when_not_certain(sql):
    assert ts_bounds(sql) is None


@settings(max_examples=200, deadline=None)
@given(moment=st.datetimes(min_value=dt.datetime(1960, 1, 1), max_value=dt.datetime(2200, 1, 1)),
       shape=st.sampled_from(["%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d",
                              "%Y-%m-%d %H:%M:%S.%f"[:-1] + "03d"]),
       wrap=st.sampled_from(["TIMESTAMP '{}'", "'{}'::TIMESTAMP", "'{}'", "DATE '{}'", "CAST('{}' AS DATE)"]))
def test_literals_read_in_python_are_what_duckdb_reads(moment, shape, wrap):
    """analytics.bounds reads plain timestamp literals itself (no round trip to DuckDB): the
    value it reads is DuckDB's, to the millisecond, or it leaves the literal to DuckDB."""
    from analytics.bounds import _literal
    from analytics.parsetree import connection, parse

    text = moment.strftime(shape) if not shape.endswith("03d") else moment.strftime("%Y-%m-%d %H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}"
    literal = wrap.format(text)
    tree = parse(f"SELECT 1 FROM readings WHERE ts >= {literal}")
    assert tree is not None
    expr = tree["statements"][0]["node"]["where_clause"]["right"]
    found = _literal(expr)
    if found is None:
        return  # left to DuckDB
    quick, exact = found
    try:
        with connection() as con:
            expected, micros = con.execute(f"SELECT epoch_ms(CAST({literal} AS TIMESTAMP)), "
                                           f"epoch_us(CAST({literal} AS TIMESTAMP))").fetchall()[0]
    except duckdb.Error:
        pytest.fail(f"{literal} read as {quick} here, refused by DuckDB")
    assert quick == expected, literal
    assert exact == (micros % 1000 == 0), literal  # exact: the bound needs no margin


@pytest.mark.parametrize("sql, reads", [
    ("SELECT * FROM readings_1m WHERE machine = 'm'", False),
    ("SELECT count(*) FROM quarantine", False),
    ("SELECT * FROM alerts a JOIN lot_runs l USING (machine)", False),
    ("WITH x AS (SELECT * FROM readings) SELECT count(*) FROM x", True),
    ("SELECT * FROM query_table('readings')", True),
    ("SELECT * FROM late_new", True),
    ("SELECT 1", False),
    ("SELECT * FROM alerts WHERE ts > TIMESTAMP '2026-01-01'", False),
    ("SELECT * FROM readings_1m WHERE minute > TIMESTAMP '2026-01-01'", False),
    ("SELECT 1; SELECT 2", False),  # refused before it runs
    ("", False),
])
def test_a_statement_that_sees_no_raw_reading_lists_no_raw_file(sql, reads):
    from analytics.bounds import NOTHING
    assert (ts_bounds(sql) != NOTHING) == reads, sql


def test_minute_bounds_of_a_question_over_readings_1m():
    from analytics.bounds import NOTHING, minute_bounds
    day = int(dt.datetime(2026, 11, 29, tzinfo=dt.UTC).timestamp() * 1000)
    lo, hi = minute_bounds("SELECT count(*) FROM readings_1m WHERE machine = 'm01' "
                           "AND minute >= TIMESTAMP '2026-11-29' AND minute < TIMESTAMP '2026-11-30'")
    assert (lo, hi) == (day, day + 86_400_000 - 1)
    # A statement that reads no minutes lists none; a join, or no bound on minute: nothing is pruned.
    assert minute_bounds("SELECT count(*) FROM readings WHERE ts >= TIMESTAMP '2026-11-29'") == NOTHING
    assert minute_bounds("SELECT count(*) FROM readings_1h") is None
    assert minute_bounds("SELECT count(*) FROM readings_1m a JOIN readings_1m b USING (machine) "
                         "WHERE a.minute >= TIMESTAMP '2026-11-29'") is None
    assert minute_bounds("SELECT count(*) FROM readings_1m WHERE machine = 'm01'") is None


@pytest.mark.parametrize("expression, shifted", [
    ("now() - INTERVAL 5 MINUTE", True),
    ("now()::TIMESTAMP - INTERVAL 2 HOUR", True),
    ("INTERVAL 90 SECOND + transaction_timestamp()", True),
    ("get_current_timestamp() - INTERVAL (3) DAY - INTERVAL 1 WEEK", True),
    ("now()::TIMESTAMPTZ - to_minutes(5) * 2", True),
    ("now() - INTERVAL 1.5 HOUR", True),
    ("current_timestamp - INTERVAL 5 MINUTE", True),  # the standard's keyword: now()
    ("CURRENT_TIMESTAMP::TIMESTAMP - INTERVAL 2 HOUR", True),
    ("localtimestamp - INTERVAL 1 HOUR", False),  # a keyword of the clock, evaluated each time
    ("now() - INTERVAL 1 MONTH", False),  # a month's length depends on the date
    ("now() - INTERVAL '5 minutes'", False),  # a string could say months
    ("date_trunc('hour', now())", False),
    ("now()::DATE", False),
    ("now() - (now() - now())", False),
])
def test_a_shifted_clock_is_evaluated_once_and_moves_with_the_clock(monkeypatch, expression, shifted):
    from analytics import bounds

    with connection() as con:
        value, shift = con.execute(f"SELECT epoch_ms(CAST({expression} AS TIMESTAMP)), "
                                   f"epoch_ms(CAST({expression} AS TIMESTAMP)) - epoch_ms(now()::TIMESTAMP)").fetchone()
    sql = f"SELECT * FROM readings WHERE ts >= {expression}"
    lo, _ = ts_bounds(sql)
    assert abs(lo + MARGIN_MS - value) < 2000  # the value DuckDB gives, less the margin
    asked = []
    evaluate = bounds._evaluate
    monkeypatch.setattr(bounds, "_evaluate", lambda *a: asked.append(a) or evaluate(*a))
    a_day_later = value - shift + 86_400_000
    monkeypatch.setattr(bounds.time, "time_ns", lambda: a_day_later * 1_000_000)
    lo_later, _ = ts_bounds(sql)
    if shifted:  # no DuckDB query: the kept shift, from the clock a day later
        assert not asked and abs(lo_later - (a_day_later + shift - MARGIN_MS)) <= 1
    else:  # evaluated by DuckDB every time (whose clock did not move a day)
        assert asked and abs(lo_later - lo) < 2000
