"""What a statement may reach besides the views: no file (CONTRACT.md section 4).

A session over a lake on local disk lets DuckDB read the lake's raw and aggregate Parquet files
itself (analytics.session), so DuckDB's own guard (`enable_external_access = false` with
`allowed_directories`) would let a statement read those files directly, beside the views: past
what the views decide (files of segments still unsealed, objects archived in the local store).
So such statements are refused here, from DuckDB's parse tree: table functions other than
those that make rows out of nothing (`range`, `unnest`, ...) or describe the catalog, and
tables named by a path (DuckDB's replacement scan of a file). Pure."""

from __future__ import annotations

import functools

from analytics.parsetree import nodes, parse

# Table functions that read no file: rows from their arguments, or the session's own catalog.
_ROW_MAKERS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})
_CATALOG_PREFIXES = ("duckdb_", "pragma_")
# A table name with one of these is a file to DuckDB (a replacement scan), never a view.
_PATH_MARKS = ("/", "\\", "*", "?", ".")


@functools.lru_cache(maxsize=256)  # a pure function of the text; statements come back
def file_access(sql: str) -> str | None:
    """Why `sql` could read a file other than through the views (None: it cannot)."""
    tree = parse(sql)
    if tree is None:
        return "DuckDB could not hand back the statement's parse tree, so what it reads cannot be checked"
    for node in nodes(tree):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            function = node.get("function")
            name = str(function.get("function_name", "")).lower() if isinstance(function, dict) else ""
            if name not in _ROW_MAKERS and not name.startswith(_CATALOG_PREFIXES):
                return f"the table function {name or '?'}() is not part of the SQL surface: query the views"
        elif kind == "BASE_TABLE":
            name = str(node.get("table_name", ""))
            if any(mark in name for mark in _PATH_MARKS):
                return f"'{name}' names a file, not a view: files are read only through the views"
    return None
