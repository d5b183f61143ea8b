"""Printing query results as a table, CSV or JSON (CONTRACT.md section 4). Pure."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import math

import orjson
import pyarrow as pa

FORMATS = ("table", "csv", "json")


def _plain(value: object) -> object:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        # DuckDB's sum() of integers is a HUGEINT, which arrives as a Decimal: still a number.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def rows_of(table: pa.Table) -> list[dict]:
    names = table.column_names
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [{name: _plain(col[r]) for name, col in zip(names, columns, strict=True)}
            for r in range(table.num_rows)]


def to_json(table: pa.Table) -> str:
    return orjson.dumps(rows_of(table), default=str).decode()


def to_csv(table: pa.Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in rows_of(table):
        writer.writerow("" if v is None else v for v in row.values())
    return out.getvalue()


def to_text_table(table: pa.Table, max_rows: int = 1000) -> str:
    header = table.column_names
    rows = [["NULL" if v is None else str(v) for v in row.values()] for row in rows_of(table.slice(0, max_rows))]
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
