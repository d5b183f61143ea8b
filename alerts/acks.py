"""Acknowledgements of alerts: who took an alert in hand, when, and why (the `alert_acks`
view, `POST /alerts/{id}/ack`).

An acknowledgement is kept as one JSON line in `{data_dir}/alerts/acks.jsonl`, appended and
fsynced before it is answered, so that it survives a crash and a restart; the file is only
ever appended to (a second acknowledgement of the same alert is a second line, and both are
kept). The pure parts (checking a request, the line format, the Arrow table SQL sees) are
apart from `AckLog`, the few lines that touch the file.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa

from core.fsutil import append_lines

ACKS_SCHEMA = pa.schema([
    ("alert_id", pa.string()),
    ("who", pa.string()),
    ("at", pa.timestamp("ms", tz="UTC")),
    ("note", pa.string()),
])
MAX_WHO = 200
MAX_NOTE = 2000
FIELDS = ("who", "note")
# An alert's id: `writer:seq` (core.records.AlertEvent.id; a writer id is letters, digits,
# '-' and '_').
_ALERT_ID = re.compile(r"(?P<writer>[\w-]+):(?P<seq>[0-9]{1,18})")


class AckError(ValueError):
    """A request body that does not fit; `field` names the part that does not."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Ack:
    alert_id: str
    who: str
    at_ms: int
    note: str

    def public(self) -> dict:
        """As the API answers it (`at` in epoch ms, as the API's other times)."""
        return {"alert_id": self.alert_id, "who": self.who, "at": self.at_ms, "note": self.note}


def split_alert_id(alert_id: str) -> tuple[str, int] | None:
    """(writer, seq) of an alert id, or None when it cannot be one."""
    found = _ALERT_ID.fullmatch(alert_id)
    return (found["writer"], int(found["seq"])) if found else None


def _text(document: Mapping[str, object], name: str, *, limit: int, required: bool) -> str:
    if name not in document:
        if required:
            raise AckError(name, f"{name} is required")
        return ""
    value = document[name]
    if not isinstance(value, str):
        raise AckError(name, f"{name} must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise AckError(name, f"{name} must be at most {limit} characters, not {len(value)}")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise AckError(name, f"{name} must not hold control characters")
    return value


def check_request(document: object) -> tuple[str, str]:
    """(who, note) of a request body `{"who": str, "note": str}` parsed from JSON; AckError
    naming the field that does not fit (`note` may be left out: no note)."""
    if not isinstance(document, dict):
        raise AckError("body", 'the body must be a JSON object, e.g. {"who": "jane", "note": "chiller reset"}')
    unknown = sorted(set(document) - set(FIELDS))
    if unknown:
        raise AckError(unknown[0], f"{unknown[0]} is not a field of an acknowledgement (who, note)")
    who = _text(document, "who", limit=MAX_WHO, required=True)
    if not who.strip():
        raise AckError("who", "who must name who acknowledges (not empty)")
    return who, _text(document, "note", limit=MAX_NOTE, required=False)


def encode(ack: Ack) -> bytes:
    """One line of the file."""
    return orjson.dumps({"alert_id": ack.alert_id, "who": ack.who, "at": ack.at_ms, "note": ack.note}) + b"\n"


def decode(data: bytes) -> list[Ack]:
    """Every whole line of the file; a line torn by a crash (never answered) is skipped."""
    acks = []
    for line in data.splitlines():
        try:
            row = orjson.loads(line)
            acks.append(Ack(str(row["alert_id"]), str(row["who"]), int(row["at"]), str(row.get("note") or "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return acks


def table(acks: Iterable[Ack]) -> pa.Table:
    """The rows of the `alert_acks` view."""
    rows = [{"alert_id": a.alert_id, "who": a.who, "at": a.at_ms, "note": a.note} for a in acks]
    return pa.Table.from_pylist(rows, schema=ACKS_SCHEMA)


def acks_path(data_dir: Path) -> Path:
    return data_dir / "alerts" / "acks.jsonl"


class AckLog:
    """The file of acknowledgements: appended and fsynced, read whole (it stays small: one
    line per acknowledgement). One lock per file in this process, so that two requests'
    lines never interleave."""

    _locks: dict[Path, threading.Lock] = {}
    _guard = threading.Lock()
    # The last reading of each file, by (size, mtime): SQL reads it on every statement.
    _cache: dict[Path, tuple[tuple[int, int], list[Ack]]] = {}

    def __init__(self, path: Path) -> None:
        self.path = path
        with AckLog._guard:
            self._lock = AckLog._locks.setdefault(path, threading.Lock())

    @classmethod
    def of(cls, data_dir: Path) -> AckLog:
        return cls(acks_path(data_dir))

    def append(self, ack: Ack) -> None:
        """Durable when it returns: written and fsynced (a new file's directory too)."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_lines(self.path, encode(ack))

    def acks(self) -> list[Ack]:
        """Every acknowledgement, oldest first."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        key = (stat.st_size, stat.st_mtime_ns)
        cached = AckLog._cache.get(self.path)
        if cached is not None and cached[0] == key:
            return cached[1]
        acks = decode(self.path.read_bytes())
        AckLog._cache[self.path] = (key, acks)
        return acks

    def table(self) -> pa.Table:
        return table(self.acks())
