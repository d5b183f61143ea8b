"""An append-only JSON-lines trail (the audit of tier moves, the history of job runs) as an
Arrow table, for the SQL views over it.

Each SQL statement binds every trail, and the trails only grow: parsing a day's file again for
every statement made a query's cost grow with the pipeline's age. The table is kept per file
in this process, and only what was appended since the last read is parsed. A file that is
replaced (another inode) or shorter than what was read is read again from the start.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa

# A table grows by a chunk per read that found new lines: combined past this many, so that
# a long-running process does not hand DuckDB thousands of tiny chunks.
_MAX_CHUNKS = 64


def parse_lines(data: bytes, schema: pa.Schema) -> pa.Table:
    """The complete JSON lines of `data` as rows of `schema`. A line torn by a crash (not
    JSON) is skipped: its record was never completed."""
    rows = []
    for line in data.splitlines():
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return pa.Table.from_pylist(rows, schema=schema)


@dataclass(frozen=True)
class _Read:
    inode: int
    offset: int  # just past the last complete line parsed
    table: pa.Table


class JsonlTable:
    """The rows of the JSON-lines file at `path`, as `schema`, read incrementally."""

    _reads: dict[Path, _Read] = {}
    _lock = threading.Lock()

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema

    def table(self) -> pa.Table:
        try:
            handle = open(self.path, "rb")  # closed by the `with` below
        except FileNotFoundError:
            return self.schema.empty_table()
        with handle:
            stat = os.fstat(handle.fileno())
            with JsonlTable._lock:
                known = JsonlTable._reads.get(self.path)
            if (known is None or known.inode != stat.st_ino or known.offset > stat.st_size
                    or not known.table.schema.equals(self.schema)):
                known = _Read(stat.st_ino, 0, self.schema.empty_table())
            if known.offset == stat.st_size:
                return known.table
            handle.seek(known.offset)
            data = handle.read(stat.st_size - known.offset)
        complete = data.rfind(b"\n") + 1  # a line still being written is left for the next read
        if complete == 0:
            return known.table
        table = pa.concat_tables([known.table, parse_lines(data[:complete], self.schema)])
        if table.column(0).num_chunks > _MAX_CHUNKS:
            table = table.combine_chunks()
        with JsonlTable._lock:
            JsonlTable._reads[self.path] = _Read(stat.st_ino, known.offset + complete, table)
        return table
