"""A statement's parse tree as DuckDB itself builds it (`json_serialize_sql`), for questions
asked before the statement runs: which views it names (analytics.leftout), which time range it
can return (analytics.bounds). Pure apart from a few small in-memory connections, reused."""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

# Idle connections by process. Not a threading.local: in a child forked while another thread
# holds one, CPython clears that thread's locals, the connection's destructor joins DuckDB
# threads that do not exist in the child, and the child segfaults inside os.fork. A module
# global outlives the fork untouched, and a parent's connections are never closed in a child.
_IDLE: dict[int, list[duckdb.DuckDBPyConnection]] = {}
_IDLE_LOCK = threading.Lock()
_KEEP_IDLE = 8  # more than the threads that parse at once in practice


def _open() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET memory_limit = '256MB'")
    con.execute("SET enable_external_access = false")
    con.execute("SET threads = 1")
    con.execute("SET lock_configuration = true")
    return con


@contextmanager
def connection() -> Iterator[duckdb.DuckDBPyConnection]:
    """A locked in-memory connection that holds no table, for this thread alone while the
    block runs; reused afterwards (opening one per statement would cost more, ~13 ms, than a
    bounded query's listing)."""
    with _IDLE_LOCK:
        idle = _IDLE.setdefault(os.getpid(), [])
        con = idle.pop() if idle else None
    if con is None:
        con = _open()
    try:
        yield con
    finally:
        with _IDLE_LOCK:
            idle = _IDLE.setdefault(os.getpid(), [])
            if len(idle) < _KEEP_IDLE:
                idle.append(con)
                con = None
        if con is not None:
            con.close()


def parse(sql: str) -> dict | None:
    """The statement's tree (`EXPLAIN [ANALYZE]` stripped: DuckDB serialises SELECTs only), or
    None when DuckDB cannot parse or serialise it. Shared: callers only read it.

    Kept for the last `_PARSED` statements: one query asks it three times (bounds, which views,
    what is left out), and dashboards repeat the same statements every second; a parse costs
    ~0.7 ms, a narrow query's whole answer a few."""
    text = sql.strip()
    for prefix in ("explain analyze", "explain"):
        if text[: len(prefix)].lower() == prefix:
            text = text[len(prefix):]
            break
    return _parse_text(text) if len(text) <= _PARSED_CHARS else _parse_text.__wrapped__(text)


_PARSED = 256
_PARSED_CHARS = 65_536  # a longer statement is not kept: 256 of them could take much memory


@functools.lru_cache(maxsize=_PARSED)
def _parse_text(text: str) -> dict | None:
    try:
        with connection() as con:
            row = con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()
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
