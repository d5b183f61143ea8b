"""Printing query results as a table, CSV or JSON (CONTRACT.md section 4). Pure.

JSON and CSV are for programs: numbers stay exact, timestamps and durations are ISO-8601
(`2026-03-01T12:00:00.000`, `PT39.475S`), booleans are `true`/`false`. The table is for a
person: durations as DuckDB prints them (`1 day 02:03:04.5`), floats to 12 significant digits.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import math
from collections.abc import Callable

import orjson
import pyarrow as pa

FORMATS = ("table", "csv", "json")
_TABLE_FLOAT_DIGITS = 12  # enough for any quantised sensor value; an avg() no longer prints 17


def _split_nanos(nanos: int) -> tuple[int, int, int, int]:
    seconds, nano = divmod(nanos, 1_000_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return hours, minute, second, nano


def _seconds_text(second: int, nano: int) -> str:
    return f"{second}.{nano:09d}".rstrip("0").rstrip(".") if nano else str(second)


def iso_duration(months: int, days: int, nanos: int) -> str:
    """An ISO-8601 duration (`P1M2DT3H4M5.5S`); a wholly negative one gets a leading minus."""
    if months <= 0 and days <= 0 and nanos <= 0 and (months or days or nanos):
        return "-" + iso_duration(-months, -days, -nanos)
    date = (f"{months}M" if months else "") + (f"{days}D" if days else "")
    sign = "-" if nanos < 0 else ""
    hours, minute, second, nano = _split_nanos(abs(nanos))
    time = "".join(f"{sign}{n}{unit}" for n, unit in ((hours, "H"), (minute, "M")) if n)
    if second or nano or not (date or time):
        time += f"{sign}{_seconds_text(second, nano)}S"
    return "P" + date + ("T" + time if time else "")


def readable_duration(months: int, days: int, nanos: int) -> str:
    """As DuckDB prints an INTERVAL: `1 month 2 days 03:04:05.5`, `00:00:39.475`."""
    parts = [f"{n} {unit}{'s' if abs(n) != 1 else ''}" for n, unit in ((months, "month"), (days, "day")) if n]
    sign = "-" if nanos < 0 else ""
    hours, minute, second, nano = _split_nanos(abs(nanos))
    clock = f"{sign}{hours:02d}:{minute:02d}:{second:02d}"
    if nano:
        clock += f".{nano:09d}".rstrip("0")
    if nanos or not parts:
        parts.append(clock)
    return " ".join(parts)


def _interval_parts(value: object) -> tuple[int, int, int] | None:
    if isinstance(value, pa.MonthDayNano):
        return value.months, value.days, value.nanoseconds
    if isinstance(value, dt.timedelta):  # Arrow durations
        return 0, 0, (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1000
    return None


def _plain(value: object, for_person: bool = False) -> object:
    """A cell as JSON/CSV (or, `for_person`, a text table) shows it."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    interval = _interval_parts(value)
    if interval is not None:
        return readable_duration(*interval) if for_person else iso_duration(*interval)
    if isinstance(value, decimal.Decimal):
        # DuckDB's sum() of integers is a HUGEINT, which arrives as a Decimal: still a number.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return format(value, f".{_TABLE_FLOAT_DIGITS}g") if for_person else value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _unique_names(names: list[str]) -> list[str]:
    """Column names as JSON keys: a repeated name (`SELECT 1 AS a, 2 AS a`) becomes `a_1`, ...,
    instead of one column silently overwriting the other."""
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, n = name, 0
        while candidate in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate)
        unique.append(candidate)
    return unique


def _cells(table: pa.Table, convert: Callable[[object], object]) -> list[list[object]]:
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [[convert(col[r]) for col in columns] for r in range(table.num_rows)]


def rows_of(table: pa.Table) -> list[dict]:
    names = _unique_names(table.column_names)
    return [dict(zip(names, row, strict=True)) for row in _cells(table, _plain)]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_json(table: pa.Table) -> str:
    return orjson.dumps(rows_of(table), default=str).decode()


def to_csv(table: pa.Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in _cells(table, _plain):
        writer.writerow("" if v is None else _text(v) for v in row)
    return out.getvalue()


def to_text_table(table: pa.Table, max_rows: int = 1000) -> str:
    header = table.column_names
    rows = [["NULL" if v is None else _text(v) for v in row]
            for row in _cells(table.slice(0, max_rows), lambda v: _plain(v, for_person=True))]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |", line]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    out.append(line)
    more = f" (first {max_rows} shown)" if table.num_rows > max_rows else ""
    out.append(f"{table.num_rows} row{'s' if table.num_rows != 1 else ''}{more}")
    return "\n".join(out)


def render(table: pa.Table, fmt: str) -> str:
    if fmt == "json":
        return to_json(table)
    if fmt == "csv":
        return to_csv(table).rstrip("\n")
    return to_text_table(table)
