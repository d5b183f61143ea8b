"""The audit trail of tier moves: one JSON line per object moved, fsynced before the source
is deleted, so that every deletion of data has a record of where its copy went."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pyarrow as pa

from core.fsutil import append_lines
from core.jsonltable import JsonlTable
from tiers.cold import Move

AUDIT_SCHEMA = pa.schema([
    ("at", pa.timestamp("ms", tz="UTC")),
    ("job", pa.string()),
    ("what", pa.string()),
    ("source", pa.string()),
    ("target", pa.string()),
    ("rows", pa.int64()),
    ("bytes", pa.int64()),
    ("checksum", pa.string()),
])


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, job: str, moves: list[Move], at_ms: int) -> None:
        if not moves:
            return
        lines = b"".join(orjson.dumps({
            "at": at_ms, "job": job, "what": m.what, "source": m.source, "target": m.target,
            "rows": m.rows, "bytes": m.bytes, "checksum": m.checksum,
        }) + b"\n" for m in moves)
        with self._lock:
            append_lines(self.path, lines)

    def table(self) -> pa.Table:
        """Every recorded move (a line torn by a crash is skipped: its move was never completed)."""
        return JsonlTable(self.path, AUDIT_SCHEMA).table()
