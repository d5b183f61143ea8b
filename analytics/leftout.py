"""What an answer leaves out: archived raw objects that the `readings` view cannot read until
they are restored (issue 16: a query is never silently incomplete). Pure.

The notice names the objects, their bytes and hours, and the `fabtier retrieve` command that
brings them back; the HTTP API carries the same in response headers, so that the body of
`POST /sql?format=json` stays a plain array of rows.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from analytics.parsetree import nodes, parse

# Views and sources that read raw readings; a statement naming none of them loses nothing.
RAW_VIEWS = frozenset({"readings", "cold_raw"})
HEADER_OBJECTS = "X-Fabtier-Left-Out-Objects"
HEADER_BYTES = "X-Fabtier-Left-Out-Bytes"
HEADER_FROM = "X-Fabtier-Left-Out-From"
HEADER_TO = "X-Fabtier-Left-Out-To"
HEADER_CLASSES = "X-Fabtier-Left-Out-Classes"
HEADER_RETRIEVE = "X-Fabtier-Retrieve"
HEADER_RETRIEVALS = "X-Fabtier-Retrievals"  # open retrieval jobs that bring some of them back


@dataclass(frozen=True)
class ArchivedObject:
    """A raw lake object that a reader would read but cannot: it is in an archive class."""

    key: str
    size: int
    storage_class: str
    start_ms: int  # the hour partition it belongs to: [start_ms, end_ms)
    end_ms: int
    job: str | None = None  # an open retrieval job that brings it back


@dataclass(frozen=True)
class LeftOut:
    objects: int
    bytes: int
    from_ms: int
    to_ms: int
    classes: Mapping[str, int] = field(default_factory=dict)
    jobs: tuple[str, ...] = ()  # open retrieval jobs that bring some of them back
    in_jobs: int = 0  # how many of them those jobs bring back

    @staticmethod
    def _iso(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def retrieve_command(self) -> str:
        return f"fabtier retrieve --from {self._iso(self.from_ms)} --to {self._iso(self.to_ms)}"

    def notice(self) -> str:
        classes = ", ".join(f"{n} {name}" for name, n in sorted(self.classes.items()))
        return (f"this answer leaves out {self.objects} archived raw object(s) ({self.bytes:,} bytes; "
                f"{classes}) holding readings from {self._iso(self.from_ms)} to {self._iso(self.to_ms)}: "
                f"they must be restored before SQL can read them ({self.retrieve_command})"
                + (f"; {self.in_jobs} of them are being brought back by retrieval job(s) {', '.join(self.jobs)} "
                   f"(fabtier retrieve --status {self.jobs[0]})" if self.jobs else ""))

    def headers(self) -> dict[str, str]:
        return {HEADER_OBJECTS: str(self.objects), HEADER_BYTES: str(self.bytes),
                HEADER_FROM: self._iso(self.from_ms), HEADER_TO: self._iso(self.to_ms),
                HEADER_CLASSES: ",".join(f"{name}={n}" for name, n in sorted(self.classes.items())),
                HEADER_RETRIEVE: self.retrieve_command,
                **({HEADER_RETRIEVALS: ",".join(self.jobs)} if self.jobs else {})}

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> LeftOut | None:
        """The notice a running instance sent (None when its answer left nothing out)."""
        found = {k.lower(): v for k, v in headers.items()}
        if HEADER_OBJECTS.lower() not in found:
            return None

        def ms(name: str) -> int:
            moment = dt.datetime.strptime(found[name.lower()], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
            return int(moment.timestamp() * 1000)
        classes = dict(part.split("=", 1) for part in found.get(HEADER_CLASSES.lower(), "").split(",") if part)
        jobs = tuple(j for j in found.get(HEADER_RETRIEVALS.lower(), "").split(",") if j)
        return cls(int(found[HEADER_OBJECTS.lower()]), int(found[HEADER_BYTES.lower()]), ms(HEADER_FROM),
                   ms(HEADER_TO), {k: int(v) for k, v in classes.items()}, jobs)


def reads_raw(sql: str) -> bool:
    """Whether the statement names a view of raw readings, from DuckDB's own parse tree (its
    `get_table_names` binds, and fails on a view it does not know). A statement it cannot
    parse is refused later with its own message; here it counts as reading them."""
    tree = parse(sql)
    if tree is None:
        return True
    return any(node.get("type") == "BASE_TABLE" and str(node.get("table_name", "")).lower() in RAW_VIEWS
               for node in nodes(tree))


def left_out(archived: Iterable[ArchivedObject], sql: str) -> LeftOut | None:
    """What `sql` cannot see of the lake's raw readings, or None when it loses nothing."""
    found = list(archived)
    if not found or not reads_raw(sql):
        return None
    return LeftOut(objects=len(found), bytes=sum(o.size for o in found),
                   from_ms=min(o.start_ms for o in found), to_ms=max(o.end_ms for o in found),
                   classes=dict(Counter(o.storage_class for o in found)),
                   jobs=tuple(sorted({o.job for o in found if o.job})), in_jobs=sum(1 for o in found if o.job))
