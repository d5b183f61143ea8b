"""What a person or a program reads from `fabtier sql`: durations, floats, booleans, names."""

import json

import duckdb

from analytics.output import iso_duration, readable_duration, render


def _table(sql: str):
    return duckdb.connect().sql(sql).to_arrow_table()


def test_intervals_are_iso_durations_in_json_and_csv_and_readable_in_the_table():
    table = _table("SELECT TIMESTAMP '2026-01-01 00:00:39.475' - TIMESTAMP '2026-01-01' AS took, "
                   "INTERVAL '1 month 2 days 3 hours 4 seconds' AS long, INTERVAL '-90 seconds' AS back")
    assert json.loads(render(table, "json")) == [{"took": "PT39.475S", "long": "P1M2DT3H4S", "back": "-PT1M30S"}]
    assert render(table, "csv").splitlines()[1] == "PT39.475S,P1M2DT3H4S,-PT1M30S"
    text = render(table, "table")
    assert "00:00:39.475" in text and "1 month 2 days 03:00:04" in text and "-00:01:30" in text
    assert "MonthDayNano" not in text


def test_duration_texts():
    assert iso_duration(0, 0, 0) == "PT0S"
    assert iso_duration(0, 1, 0) == "P1D"
    assert iso_duration(0, 0, 3_600_000_000_000) == "PT1H"
    assert readable_duration(0, 0, 0) == "00:00:00"
    assert readable_duration(0, 1, 0) == "1 day"


def test_booleans_are_lower_case_and_floats_short_in_the_table():
    table = _table("SELECT true AS ok, false AS bad, 23.508333333333333::DOUBLE AS avg, 23.51::DOUBLE AS v")
    assert render(table, "csv").splitlines()[1] == "true,false,23.508333333333333,23.51"
    assert json.loads(render(table, "json")) == [{"ok": True, "bad": False, "avg": 23.508333333333333, "v": 23.51}]
    row = render(table, "table").splitlines()[3]
    assert "| true | false | 23.5083333333 | 23.51 |" == row


def test_repeated_column_names_keep_every_column():
    table = _table("SELECT 1 AS a, 2 AS a")
    assert json.loads(render(table, "json")) == [{"a": 1, "a_1": 2}]
    assert render(table, "csv").splitlines() == ["a,a", "1,2"]
    assert "| 1 | 2 |" in render(table, "table")
