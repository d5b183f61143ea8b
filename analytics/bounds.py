"""The time range a statement over `readings` can return, from DuckDB's own parse tree, so
that the lake is listed (and its archived objects named) only for the days that range
touches. Pure apart from a throwaway in-memory DuckDB connection.

`ts_bounds` answers only when it is certain: one plain SELECT whose only table (anywhere in
the statement) is `readings`, with a WHERE clause whose top-level AND holds comparisons of
`ts` with constant expressions. Every other statement gets None: nothing is pruned.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import time
from dataclasses import dataclass

import duckdb

from analytics.parsetree import connection, nodes, parse

HOUR_MS = 3_600_000
# Widening of the bounds, so that a rounding (epoch_ms truncates, a TIMESTAMP_NS literal: less
# than a millisecond) can never drop a reading; and for now()-relative bounds, the query runs a
# little later. Files are chosen by their exact time ranges (the catalog's statistics), so a
# wider margin only hands the scan files that cannot match (an hour's did: the hours before and
# after an hour's question, the days before and after a day's).
MARGIN_MS = 1_000  # the same for `minute` (minute_bounds)
NOW_MARGIN_MS = 15 * 60_000

TsBounds = tuple[int | None, int | None]

# Functions whose value changes from one call to the next: a term using one is not constant.
_VOLATILE = frozenset({"random", "gen_random_uuid", "uuid", "uuidv4", "uuidv7", "setseed", "nextval",
                       "currval", "getvariable"})
# Functions of the time the statement runs: the query's own now() is later than ours.
_CLOCK = frozenset({"now", "current_timestamp", "get_current_timestamp", "transaction_timestamp",
                    "current_date", "today", "current_time", "get_current_time", "localtimestamp",
                    "current_localtimestamp", "localtime", "statement_timestamp"})
# The SQL standard's clock keywords, written without parentheses: DuckDB parses each as a column
# reference, which it binds to the clock when nothing in scope has that name (no view has; a
# statement that names something so is not bounded: `_terms`). Unrecognised, `ts >
# current_timestamp - INTERVAL 5 MINUTE` listed the whole lake and every unsealed batch: 8.6 s
# where `now()` took 15 ms (30 M readings in the lake, 30 M unsealed).
_CLOCK_KEYWORDS = frozenset({"current_timestamp", "current_date", "current_time", "localtimestamp", "localtime"})
# Classes of expression that are never constant (or that could read a table).
_NOT_CONSTANT = frozenset({"COLUMN_REF", "SUBQUERY", "STAR", "PARAMETER", "LAMBDA", "WINDOW", "LAMBDA_REF",
                           "POSITIONAL_REFERENCE", "COLLATE"})

_LOWER = {"COMPARE_GREATERTHANOREQUALTO", "COMPARE_GREATERTHAN"}
_STRICT = {"COMPARE_GREATERTHAN", "COMPARE_LESSTHAN"}
_UPPER = {"COMPARE_LESSTHANOREQUALTO", "COMPARE_LESSTHAN"}
_FLIP = {"COMPARE_GREATERTHANOREQUALTO": "COMPARE_LESSTHANOREQUALTO",
         "COMPARE_GREATERTHAN": "COMPARE_LESSTHAN",
         "COMPARE_LESSTHANOREQUALTO": "COMPARE_GREATERTHANOREQUALTO",
         "COMPARE_LESSTHAN": "COMPARE_GREATERTHAN", "COMPARE_EQUAL": "COMPARE_EQUAL"}


def _clock_keyword(node: dict) -> str | None:
    """The clock keyword that `node` is (lower case), if it is one."""
    names = node.get("column_names") if node.get("class") == "COLUMN_REF" else None
    if isinstance(names, list) and len(names) == 1 and str(names[0]).lower() in _CLOCK_KEYWORDS:
        return str(names[0]).lower()
    return None


def _constant(expr: dict) -> bool:
    for node in nodes(expr):
        if _clock_keyword(node) is not None:
            continue
        if node.get("class") in _NOT_CONSTANT or node.get("type") in ("BASE_TABLE", "SUBQUERY"):
            return False
        if node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in _VOLATILE:
            return False
    return True


def _uses_clock(expr: dict) -> bool:
    return any((n.get("class") == "FUNCTION" and str(n.get("function_name", "")).lower() in _CLOCK)
               or _clock_keyword(n) is not None for n in nodes(expr))


def _is_ts(expr: dict, names: set[str], column: str = "ts") -> bool:
    if expr.get("class") != "COLUMN_REF":
        return False
    path = [str(p).lower() for p in expr.get("column_names", [])]
    return path == [column] or (len(path) == 2 and path[0] in names and path[1] == column)


_PLAIN_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?$")
_EPOCH = dt.datetime(1970, 1, 1)


def _literal(expr: dict) -> tuple[int, bool] | None:
    """A plain timestamp or date literal (`TIMESTAMP '2026-01-01 10:00'`, `'2026-01-01'::DATE`,
    `'2026-01-01T10:00:00'`) read here, not by DuckDB (two round trips each); None for
    anything else, which DuckDB evaluates. Only forms without a zone and from 1970 on, whose
    meaning is the same in both. (epoch ms, whether exact: no digits below the millisecond)."""
    literal = expr
    if expr.get("class") == "CAST":
        type_expr = expr.get("type_expr") or {}
        if (expr.get("try_cast") or type_expr.get("children")
                or str(type_expr.get("type_name", "")).upper() not in ("TIMESTAMP", "DATE")):
            return None
        literal = expr.get("child") or {}
        if str(type_expr.get("type_name")).upper() == "DATE" and len(str(
                (literal.get("literal") or {}).get("text", ""))) != 10:
            return None
    if literal.get("class") != "CONSTANT" or (literal.get("literal") or {}).get("kind") != "STRING":
        return None
    text = str(literal["literal"].get("text", ""))
    if not _PLAIN_TIMESTAMP.match(text):
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        return None
    if value.year < 1970:
        return None
    # to the nearest millisecond, half up, as DuckDB's epoch_ms (the margin covers either way)
    micros = (value - _EPOCH) // dt.timedelta(microseconds=1)
    return (micros + 500) // 1000, micros % 1000 == 0


@functools.lru_cache(maxsize=1)
def _template() -> str:
    """A parse tree's JSON to put one expression in (the same for every statement)."""
    with connection() as con:
        row = con.execute("SELECT json_serialize_sql('SELECT 1')").fetchone()
    return row[0] if row else "{}"


@functools.lru_cache(maxsize=256)
def _expression_sql(expr_json: str) -> str | None:
    """`SELECT <expr>` as SQL text, for the expression whose tree is `expr_json`; kept, as
    statements come back (a dashboard's `now() - INTERVAL 5 MINUTE` every second) and each
    deserialisation is a DuckDB query of its own."""
    tree = json.loads(_template())
    tree["statements"][0]["node"]["select_list"] = [json.loads(expr_json)]
    try:
        with connection() as con:
            row = con.execute("SELECT json_deserialize_sql(?::JSON)", [json.dumps(tree)]).fetchone()
    except duckdb.Error:
        return None
    return row[0] if row and row[0] else None


@dataclass(frozen=True)
class _Term:
    """One comparison of the time column with a constant: which side it bounds, whether
    strictly, and the constant (read here when it is a plain literal, else its tree as JSON,
    for DuckDB to evaluate each time: it may read the clock)."""

    side: str  # lower, upper or equal
    strict: bool
    literal: tuple[int, bool] | None
    expression: str
    uses_clock: bool
    constant: bool  # a bare constant (a string is compared as a timestamp only then)


def _evaluated_ms(con: duckdb.DuckDBPyConnection, term: _Term) -> int | None:
    """The value of a term's constant in epoch ms, as the session compares it with `ts` (a
    TIMESTAMP of UTC wall time, in a session whose time zone is UTC); evaluated every time:
    it may read the clock. A term that is the clock shifted by a fixed length (`now() -
    INTERVAL 5 MINUTE`) is evaluated once, for its shift: a DuckDB query costs ~1 ms."""
    if term.uses_clock:
        shift = _clock_shift_ms(term.expression, term.constant)
        if shift is not None:
            return time.time_ns() // 1_000_000 + shift
    found = _evaluate(con, term.expression, term.constant, "")
    return found[0] if found is not None else None


def _evaluate(con: duckdb.DuckDBPyConnection, expression: str, constant: bool, also: str) -> tuple[int, ...] | None:
    """(epoch ms of the expression, then of each of `also`'s terms) by DuckDB; None when it is
    not compared with `ts` as a time."""
    select = _expression_sql(expression)
    if select is None:
        return None
    try:
        found = con.execute(f"SELECT typeof(x), epoch_ms(CAST(x AS TIMESTAMP)){also} FROM ({select}) AS t(x)").fetchone()
    except duckdb.Error:
        return None
    if not found or any(v is None for v in found[1:]):
        return None
    kind = str(found[0]).upper()
    # A timestamp or date is compared as a timestamp; a string only as a literal (another
    # string expression may make DuckDB compare `ts` as a string).
    if not (kind.startswith("TIMESTAMP") or kind == "DATE" or (kind == "VARCHAR" and constant)):
        return None
    return tuple(int(v) for v in found[1:])


# The clock (the statement's start: a TIMESTAMP WITH TIME ZONE), and what shifts it by a fixed
# length: numbers, and intervals of an exact length (a day is 24 hours in a UTC session; not
# months or years, whose length depends on the date, nor a string read as an interval).
_NOW = frozenset({"now", "current_timestamp", "get_current_timestamp", "transaction_timestamp"})
_FIXED_FUNCTIONS = frozenset({"to_microseconds", "to_milliseconds", "to_seconds", "to_minutes", "to_hours",
                              "to_days", "to_weeks", "trunc", "+", "-", "*"})
_NUMBERS = frozenset({"INTEGER", "BIGINT", "HUGEINT", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER", "NUMERIC",
                      "DECIMAL", "DOUBLE", "FLOAT"})
_INSTANTS = frozenset({"TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"})


def _cast_to(expr: dict, names: frozenset[str]) -> bool:
    type_expr = expr.get("type_expr") or {}
    return (not expr.get("try_cast") and not type_expr.get("children")
            and str(type_expr.get("type_name", "")).upper() in names)


def _fixed(expr: dict) -> bool:
    """Whether `expr` is a number or an exact-length interval, whatever the time."""
    kind = expr.get("class")
    if kind == "CONSTANT":
        return str((expr.get("literal") or {}).get("kind", "")).upper() in _NUMBERS
    if kind == "CAST":
        return _cast_to(expr, _NUMBERS) and _fixed(expr.get("child") or {})
    if kind == "FUNCTION":
        return (str(expr.get("function_name", "")).lower() in _FIXED_FUNCTIONS and not expr.get("filter")
                and all(_fixed(a.get("expression") or {}) for a in expr.get("arguments", [])))
    return False


def _shifted_clock(expr: dict) -> bool:
    """Whether `expr` is the clock plus or minus fixed lengths (its distance to the clock
    never changes)."""
    kind = expr.get("class")
    if kind == "CAST":
        return _cast_to(expr, _INSTANTS) and _shifted_clock(expr.get("child") or {})
    keyword = _clock_keyword(expr)
    if keyword is not None:  # the clock function of that name, written without parentheses
        return keyword in _NOW
    if kind != "FUNCTION":
        return False
    name = str(expr.get("function_name", "")).lower()
    args = [a.get("expression") or {} for a in expr.get("arguments", [])]
    if name in _NOW:
        return not args
    if name == "+" and len(args) == 2:
        return (_shifted_clock(args[0]) and _fixed(args[1])) or (_fixed(args[0]) and _shifted_clock(args[1]))
    if name == "-" and len(args) == 2:
        return _shifted_clock(args[0]) and _fixed(args[1])
    return False


@functools.lru_cache(maxsize=256)
def _clock_shift_ms(expression: str, constant: bool) -> int | None:
    """For a term that is the clock shifted by a fixed length: the shift in ms, evaluated by
    DuckDB once (kept, as the text of the term is). None for any other term."""
    if not _shifted_clock(json.loads(expression)):
        return None
    with connection() as con:
        found = _evaluate(con, expression, constant, ", epoch_ms(now()::TIMESTAMP)")
    return found[0] - found[1] if found is not None else None


def _statement(sql: str) -> dict | None:
    tree = parse(sql)
    statements = tree.get("statements") if tree is not None else None
    if not isinstance(statements, list) or len(statements) != 1 or not isinstance(statements[0], dict):
        return None
    node = statements[0].get("node")
    return node if isinstance(node, dict) else None


# The views through which a statement can see the lake's raw readings, and its minutes.
_RAW_SOURCES = ("readings", "cold_raw", "late_new")
_MINUTE_SOURCES = ("readings_1m", "readings_1h", "cold_agg_1m", "cold_agg_1m_arrow", "warm_1m")
NOTHING: TsBounds = (1, 0)  # an empty range: the statement sees no raw reading


# The views through which a statement can see the unsealed (hot) readings.
_HOT_READINGS = ("readings", "late_new", "hot_fresh", "hot_late")


def reads_hot_readings(sql: str) -> bool:
    """Whether `sql` can see the unsealed readings (it names a view of them, calls a table
    function, or cannot be parsed): a statement that cannot is handed none, so that its
    snapshot never builds the hot tier's tables (~10 ms in the ingest process at full rate)."""
    return _may_read(sql, _HOT_READINGS)


# The views through which a statement can see each kind of unsealed record.
_HOT_RECORDS = {"quarantine": ("quarantine", "hot_quarantine"), "context": ("lot_events", "lot_runs", "hot_context"),
                "alerts": ("alerts", "hot_alerts")}


def hot_records_read(sql: str) -> frozenset[str]:
    """The kinds of unsealed records (tiers.unsealed.RECORD_KINDS) `sql` can see: a snapshot builds the
    tables of only these (a lot context table is ~1 ms of Python a statement at full rate)."""
    return frozenset(kind for kind, views in _HOT_RECORDS.items() if _may_read(sql, views))


def hot_ts_bounds(sql: str, bounds: TsBounds | None) -> TsBounds | None:
    """`bounds` (`ts_bounds(sql)`) for pruning the unsealed readings' batches, or None when the
    statement may read the hot tables by their own names, whose rows `ts_bounds` does not
    look at (they hold more than the views show)."""
    if bounds is None or _may_read(sql, ("hot_fresh", "hot_late")):
        return None
    return bounds


def ts_bounds(sql: str) -> TsBounds | None:
    """[lo, hi] in epoch ms (None: open on that side), widened by `MARGIN_MS`, that contain the
    `ts` of every reading `sql` can see; None when that is not certain (nothing is pruned);
    `NOTHING` for a statement that names no view of raw readings (and calls no table function,
    which could name one in a string), so that no raw file of the lake is even listed."""
    if not _may_read(sql, _RAW_SOURCES, "cold_raw_"):
        return NOTHING
    with connection() as con:
        return _bounds(con, sql)


def minute_bounds(sql: str) -> TsBounds | None:
    """As `ts_bounds`, for a plain SELECT whose only table is `readings_1m`: [lo, hi] of the
    `minute` of every row it can see, so that only the lake's aggregate files (one a day)
    whose minutes can match are handed to the scan. None: not certain, nothing is pruned;
    `NOTHING` for a statement that names no view of the minutes (nor a table function)."""
    if not _may_read(sql, _MINUTE_SOURCES):
        return NOTHING
    with connection() as con:
        return _bounds(con, sql, table_name="readings_1m", column="minute")


@functools.lru_cache(maxsize=256)  # a pure function of the text; statements come back
def _may_read(sql: str, views: tuple[str, ...], prefix: str | None = None) -> bool:
    """Whether `sql` can read any of `views` (or a table whose name starts with `prefix`):
    it names one, calls a table function (which could name one in a string), or cannot be
    parsed."""
    tree = parse(sql)
    if tree is None:
        return True
    for node in nodes(tree):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            return True
        name = str(node.get("table_name", "")).lower()
        if kind == "BASE_TABLE" and (name in views or (prefix is not None and name.startswith(prefix))):
            return True
    return False


def _bounds(con: duckdb.DuckDBPyConnection, sql: str, *, table_name: str = "readings",
            column: str = "ts") -> TsBounds | None:
    terms = _terms(sql, table_name, column)
    if terms is None:
        return None
    los: list[int] = []
    his: list[int] = []
    for term in terms:
        value = term.literal[0] if term.literal is not None else _evaluated_ms(con, term)
        if value is None:
            continue
        # A literal to the millisecond is exact (readings' times are whole milliseconds):
        # no margin, and a strict bound moves by one. Anything else is widened.
        exact = term.literal is not None and term.literal[1]
        step = 1 if term.strict else 0
        if term.side in ("lower", "equal"):
            los.append(value + step if exact else value - MARGIN_MS)
        if term.side in ("upper", "equal"):
            his.append(value - step if exact else value + MARGIN_MS + (NOW_MARGIN_MS if term.uses_clock else 0))
    if not los and not his:
        return None
    return (max(los) if los else None), (min(his) if his else None)


@functools.lru_cache(maxsize=256)  # a pure function of the text; statements come back
def _terms(sql: str, table_name: str, column: str) -> tuple[_Term, ...] | None:
    """The statement's comparisons of `column` with constants, when it is a plain SELECT from
    `table_name` alone; None otherwise (nothing can be bounded)."""
    node = _statement(sql)
    if node is None or node.get("type") != "SELECT_NODE" or node.get("cte_map", {}).get("map"):
        return None
    table = node.get("from_table")
    if (not isinstance(table, dict) or table.get("type") != "BASE_TABLE"
            or str(table.get("table_name", "")).lower() != table_name
            or table.get("schema_name") or table.get("catalog_name") or table.get("sample")
            or table.get("at_clause") or table.get("column_name_alias") or node.get("sample")):
        return None
    # One table in the whole statement, and no subquery anywhere: nothing else reads readings.
    everything = list(nodes(node))
    if sum(1 for n in everything if n.get("type") == "BASE_TABLE") != 1:
        return None
    if any(n.get("class") == "SUBQUERY" or n.get("type") in ("SUBQUERY", "SET_OPERATION_NODE") for n in everything):
        return None
    # A select-list alias named as a clock keyword may be what the keyword means in WHERE.
    if any(str(n.get("alias", "")).lower() in _CLOCK_KEYWORDS for n in everything):
        return None
    where = node.get("where_clause")
    if not isinstance(where, dict):
        return None
    terms = where.get("children", []) if where.get("type") == "CONJUNCTION_AND" else [where]
    names = {table_name} | ({str(table["alias"]).lower()} if table.get("alias") else set())
    found: list[_Term] = []
    for term in terms:
        if not isinstance(term, dict):
            continue
        pairs: list[tuple[str, bool, dict]] = []  # (lower / upper / equal, strict, constant side)
        if term.get("type") == "COMPARE_BETWEEN" and _is_ts(term.get("input", {}), names, column):
            pairs = [("lower", False, term.get("lower", {})), ("upper", False, term.get("upper", {}))]
        elif term.get("class") == "COMPARISON" and term.get("type") in _FLIP:
            kind, left, right = term["type"], term.get("left", {}), term.get("right", {})
            if not _is_ts(left, names, column) and _is_ts(right, names, column):
                kind, left, right = _FLIP[kind], right, left
            if _is_ts(left, names, column):
                side = "lower" if kind in _LOWER else "upper" if kind in _UPPER else "equal"
                pairs = [(side, kind in _STRICT, right)]
        for side, strict, expr in pairs:
            if isinstance(expr, dict) and _constant(expr):
                found.append(_Term(side, strict, _literal(expr), json.dumps(expr, sort_keys=True),
                                   _uses_clock(expr), expr.get("class") == "CONSTANT"))
    return tuple(found)
