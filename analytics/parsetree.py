"""A statement's parse tree as DuckDB itself builds it (`json_serialize_sql`), for questions
asked before the statement runs: which views it names (analytics.leftout), which time range it
can return (analytics.bounds). Pure apart from one small in-memory connection per thread."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator

import duckdb

_LOCAL = threading.local()


def connection() -> duckdb.DuckDBPyConnection:
    """One locked in-memory connection per thread (and process: a forked child makes its
    own), which holds no table: opening one per statement would cost more (~13 ms) than a
    bounded query's listing."""
    found = getattr(_LOCAL, "con", None)
    if found is not None and found[0] == os.getpid():
        return found[1]
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET memory_limit = '256MB'")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    _LOCAL.con = (os.getpid(), con)
    return con


def parse(sql: str) -> dict | None:
    """The statement's tree (`EXPLAIN [ANALYZE]` stripped: DuckDB serialises SELECTs only), or
    None when DuckDB cannot parse or serialise it."""
    text = sql.strip()
    for prefix in ("explain analyze", "explain"):
        if text[: len(prefix)].lower() == prefix:
            text = text[len(prefix):]
            break
    try:
        row = connection().execute("SELECT json_serialize_sql(?)", [text]).fetchone()
    except duckdb.Error:
        return None
    tree = json.loads(row[0]) if row and row[0] else None
    return tree if isinstance(tree, dict) and not tree.get("error") else None


def nodes(tree: object) -> Iterator[dict]:
    """Every object of the tree, depth first."""
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from nodes(value)
