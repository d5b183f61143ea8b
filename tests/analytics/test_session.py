import json

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from analytics.output import render
from analytics.session import SqlSources, run_sql
from core.errors import SqlError
from lifecycle.audit import AUDIT_SCHEMA
from tiers.unsealed import CONTEXT_SCHEMA, QUARANTINE_SCHEMA, READINGS_SCHEMA

T0 = 1_764_000_000_000


def readings(rows):
    return pa.Table.from_pylist([dict(machine=m, sensor=s, ts=t, value=v) for m, s, t, v in rows],
                                schema=READINGS_SCHEMA)


def sources(cold_rows=(), fresh=(), late=(), context=()):
    empty = lambda schema: ds.dataset(schema.empty_table())  # noqa: E731
    return SqlSources(
        cold_raw=ds.dataset(readings(cold_rows)),
        cold_quarantine=empty(QUARANTINE_SCHEMA),
        cold_context=ds.dataset(pa.Table.from_pylist(
            [dict(ts=t, machine=m, event=e, lot=lot, wafer="W01", recipe="R") for t, m, e, lot in context],
            schema=CONTEXT_SCHEMA)),
        hot_fresh=readings(fresh),
        hot_late=readings(late),
        hot_quarantine=QUARANTINE_SCHEMA.empty_table(),
        hot_context=CONTEXT_SCHEMA.empty_table(),
        audit=AUDIT_SCHEMA.empty_table(),
    )


def test_late_rows_already_in_cold_or_hot_appear_once():
    src = sources(cold_rows=[("m", "s", T0, 1.0)], fresh=[("m", "s", T0 + 1, 2.0)],
                  late=[("m", "s", T0, 1.0), ("m", "s", T0 + 1, 2.0), ("m", "s", T0 - 5, 0.5), ("m", "s", T0 - 5, 0.5)])
    table = run_sql(src, "SELECT epoch_ms(ts) AS ms, value FROM readings ORDER BY ts")
    assert table.to_pylist() == [{"ms": T0 - 5, "value": 0.5}, {"ms": T0, "value": 1.0}, {"ms": T0 + 1, "value": 2.0}]


def test_a_reused_session_follows_which_parts_of_readings_have_rows():
    # One session (the pool keeps it) over snapshots whose hot parts come and go: `readings`
    # is rebuilt for each shape and never shows a part of an earlier snapshot.
    cold = [("m", "s", T0, 1.0)]
    shapes = [
        (sources(cold_rows=cold), [T0]),
        (sources(cold_rows=cold, fresh=[("m", "s", T0 + 1, 2.0)]), [T0, T0 + 1]),
        (sources(cold_rows=cold, late=[("m", "s", T0 - 5, 0.5), ("m", "s", T0, 1.0)]), [T0 - 5, T0]),
        (sources(cold_rows=cold, fresh=[("m", "s", T0 + 2, 3.0)], late=[("m", "s", T0 - 7, 0.5)]),
         [T0 - 7, T0, T0 + 2]),
        (sources(cold_rows=cold), [T0]),
    ]
    for src, expected in shapes * 2:
        table = run_sql(src, "SELECT epoch_ms(ts) AS ms FROM readings ORDER BY ts")
        assert table.column("ms").to_pylist() == expected


def test_views_have_the_contract_types():
    table = run_sql(sources(fresh=[("m", "s", T0, 1.0)]), "DESCRIBE readings")
    types = dict(zip(table.column("column_name").to_pylist(),
                     table.column("column_type").to_pylist(), strict=True))
    assert types == {"machine": "VARCHAR", "sensor": "VARCHAR", "ts": "TIMESTAMP", "value": "DOUBLE"}


def test_lot_runs_close_at_end_or_next_start():
    src = sources(context=[(T0, "m", "start", "L1"), (T0 + 10, "m", "end", "L1"),
                           (T0 + 20, "m", "start", "L2"), (T0 + 30, "m", "start", "L3")])
    rows = run_sql(src, "SELECT lot, epoch_ms(start_ts) AS s, epoch_ms(end_ts) AS e FROM lot_runs ORDER BY s").to_pylist()
    assert rows == [{"lot": "L1", "s": T0, "e": T0 + 10}, {"lot": "L2", "s": T0 + 20, "e": T0 + 30},
                    {"lot": "L3", "s": T0 + 30, "e": None}]


@pytest.mark.parametrize("statement, fragment", [
    ("CREATE TABLE x (a INT)", "read-only"),
    ("COPY (SELECT 1) TO '/tmp/out.csv'", "read-only"),
    ("ATTACH '/tmp/x.db'", "read-only"),
    ("INSTALL httpfs", "read-only"),
    ("SET enable_external_access = true", "read-only"),
    ("SELECT * FROM read_parquet('/etc/hostname')", "not part of the SQL surface"),
    ("SELECT * FROM read_csv_auto('http://127.0.0.1:1/x.csv')", "not part of the SQL surface"),
    ("SELECT * FROM 'secret.parquet'", "names a file"),
    ("SELECT count(*) FROM (SELECT * FROM range(3)) JOIN glob('/etc/*') ON true", "glob() is not part"),
    ("SELECT * FROM nowhere", "nowhere"),
    ("SELECT 1; SELECT 2", "exactly one"),
])
def test_the_sql_surface_is_read_only_and_sealed(statement, fragment):
    with pytest.raises(SqlError) as caught:
        run_sql(sources(), statement)
    assert fragment in str(caught.value)


def test_output_formats():
    table = run_sql(sources(fresh=[("m", "s", T0, 1.5)]),
                    "SELECT machine, ts, value, count(*) OVER () AS n FROM readings")
    assert json.loads(render(table, "json")) == [
        {"machine": "m", "ts": "2025-11-24T16:00:00.000", "value": 1.5, "n": 1}]
    assert render(table, "csv").splitlines() == ["machine,ts,value,n", "m,2025-11-24T16:00:00.000,1.5,1"]
    text = render(table, "table")
    assert "| m " in text and text.endswith("1 row")


def test_a_query_over_the_memory_limit_fails_with_duckdbs_message(tmp_path):
    """A statement bigger than [api] sql_memory_limit gets DuckDB's out-of-memory error
    instead of taking the memory of the ingesting process; smaller ones run as usual."""
    heavy = "SELECT count(*) AS n FROM (SELECT DISTINCT range % 20000000 AS a, range AS b FROM range(20000000))"
    with pytest.raises(SqlError, match="Out of Memory"):
        run_sql(sources(), heavy, memory_limit=20 << 20, spill_dir=str(tmp_path))
    light = run_sql(sources(fresh=[("m", "s", T0, 1.0)]), "SELECT count(*) AS n FROM readings",
                    memory_limit=20 << 20, spill_dir=str(tmp_path))
    assert light.to_pylist() == [{"n": 1}]
