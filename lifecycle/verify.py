"""Verification of the lake against the audit trail (issue 14): a damaged Parquet file is found
and set aside, never served as good data.

Every file a reader reads (`tiers.layout.visible`: raw, quarantine, context and alerts files,
and agg_1m's) is read back whole and judged against the latest audited write of its key (the
`Move` its writer recorded: rows and the content checksum of `tiers.parquetformat.checksum`,
the function the writer used). A file is *damaged* when it does not parse as Parquet (a page
checksum that fails included), has other columns than its kind's, or holds other rows or
content than its audited write. agg_1m files are replaced whole when minutes are added and
their audited checksum covers only the minutes that write added, so they are judged on
parsing, columns and holding at least the rows it added. A file with no audited write
(written before the audit trail existed, or by another writer, whose audit trail is in its own
data directory) is checked for parsing and columns only.

A damaged file is copied, byte for byte, to `damaged/{key}` (a prefix no reader, rule or job
reads), the copy read back and compared, both the copy and the removal recorded in the audit
trail (`what = "damaged"`, fsynced), and only then is the original removed through the lake's
store (so its catalog stays right). Removing one part of a compacted set of several parts would
leave the set incomplete: its other, good parts would be hidden and then deleted as a
leftover. Unless the set's sources are still there (a crash between the audit and their
deletion: they take over), the part is therefore replaced by an empty file of its name and
schema, audited as a write. Each damaged file is logged at ERROR with what differed, which
readings are lost from the lake and where they may still be.

Incremental: `{data_dir}/lifecycle/verified.json` remembers each file verified by (key, size,
time, the audited checksum it was judged against), so a run reads only files new or changed
since, or whose audited write changed; `full` reads everything. A change that keeps a file's
size and time (bit rot) is found only by a full run. A scheduled run reads at most `max_bytes`
and leaves the rest for its next run.

Pure parts (which write is the latest per key, which files are due, the judgement, the words of
the log line) are apart from the I/O (`verify_lake`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from core.fsutil import fsync_dir
from core.protocols import ObjectStore
from core.records import ObjectInfo
from lifecycle.audit import AuditLog
from tiers import catalog, layout
from tiers import parquetformat as fmt
from tiers.cold import Move, raw_schema
from tiers.layout import LakeFile
from tiers.store import ObjectArchived, ObjectMissing
from tiers.unsealed import ALERTS_SCHEMA, CONTEXT_SCHEMA, QUARANTINE_SCHEMA
from tiers.warm import MINUTES_SCHEMA

log = logging.getLogger("fabtier.lifecycle")

JOB = "verify"
DAMAGED_PREFIX = "damaged/"
STATE_FILE = "verified.json"
KINDS = ("raw", "quarantine", "context", "alerts", "agg_1m")
# What a Move's `what` is for a write of a lake file (and "damaged" for an empty replacement).
WRITES = frozenset({"raw", "compact", "quarantine", "context", "alerts", "agg_1m", "damaged"})
_COLUMNS = {"quarantine": tuple(QUARANTINE_SCHEMA.names), "context": tuple(CONTEXT_SCHEMA.names),
            "alerts": tuple(ALERTS_SCHEMA.names), "agg_1m": tuple(MINUTES_SCHEMA.names),
            "raw": ("machine", "sensor", "ts", "value")}
_DICTIONARIES = {"raw": ["machine", "sensor"], "agg_1m": ["machine", "sensor"]}
SAVE_EVERY = 256  # files between saves of the state: a crash loses at most this much progress


# ---- pure: the audit trail, the state, the judgement ---------------------------------------
@dataclass(frozen=True)
class Written:
    """The latest audited write of one key."""

    key: str
    what: str
    rows: int
    bytes: int
    checksum: str
    source: str


def latest_writes(lines: Iterable[bytes], store_url: str) -> dict[str, Written]:
    """Key -> its latest audited write, from the audit trail's lines (torn lines skipped)."""
    prefix = store_url.rstrip("/") + "/"
    found: dict[str, Written] = {}
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line torn by a crash: its move was redone and recorded again
        if not isinstance(record, dict):
            continue
        target = record.get("target") or ""
        if record.get("what") not in WRITES or not target.startswith(prefix) or not record.get("checksum"):
            continue
        key = target[len(prefix):]
        if key.startswith(DAMAGED_PREFIX):
            continue  # a damaged file's copy: not a lake file
        found[key] = Written(key, str(record["what"]), int(record.get("rows") or 0), int(record.get("bytes") or 0),
                             str(record["checksum"]), str(record.get("source") or ""))
    return found


@dataclass(frozen=True)
class Seen:
    """A verified file as the state remembers it."""

    size: int
    mtime_ms: int
    checksum: str  # of the audited write it was judged against ("" without one)


def due(files: list[tuple[str, int, int]], seen: dict[str, Seen], writes: dict[str, Written], *,
        full: bool) -> list[str]:
    """The keys of `files` ((key, size, time)) to read: all of them for a full run; else those
    new, changed, or whose audited write is not the one they were judged against."""
    found = []
    for key, size, mtime in files:
        written = writes.get(key)
        if full or seen.get(key) != Seen(size, mtime, written.checksum if written else ""):
            found.append(key)
    return found


def load_state(data: bytes, store_url: str) -> dict[str, Seen]:
    """The state file's files, if it is this store's (else nothing is known verified)."""
    try:
        doc = orjson.loads(data)
        if doc.get("store") != store_url:
            return {}
        return {key: Seen(int(v[0]), int(v[1]), str(v[2])) for key, v in doc["files"].items()}
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError, IndexError):
        return {}  # unreadable: everything is read again


def dump_state(seen: dict[str, Seen], store_url: str) -> bytes:
    return orjson.dumps({"store": store_url, "files": {k: [s.size, s.mtime_ms, s.checksum]
                                                       for k, s in sorted(seen.items())}})


@dataclass(frozen=True)
class Readback:
    """A file as read now: its size, and its rows, columns and content checksum, or why it
    could not be read as Parquet."""

    size: int
    rows: int = 0
    columns: tuple[str, ...] = ()
    checksum: str = ""
    error: str | None = None


def judge(kind: str, written: Written | None, back: Readback) -> str | None:
    """What is wrong with a file, in words; None when it is good."""
    if back.error is not None:
        return f"it does not read as Parquet ({back.error})"
    expected = _COLUMNS.get(kind)
    if expected is not None and back.columns != expected:
        return f"its columns are {', '.join(back.columns) or 'none'}, not {', '.join(expected)}"
    if written is None:
        return None
    if kind == "agg_1m":
        if back.rows < written.rows:
            return (f"it holds {back.rows} minute(s), fewer than the {written.rows} its last audited write "
                    "added")
        return None
    differences = []
    if back.rows != written.rows:
        differences.append(f"{back.rows} rows where the audit trail records {written.rows}")
    if back.checksum != written.checksum:
        differences.append("its content checksum differs from the audited one")
    if not differences:
        return None
    if back.size != written.bytes:
        differences.append(f"{back.size} bytes where {written.bytes} were written")
    return "; ".join(differences)


def read_back(kind: str, data: bytes) -> Readback:
    """Parse a file's bytes whole (page checksums verified where the file has them)."""
    try:
        table = pq.read_table(pa.BufferReader(data), read_dictionary=_DICTIONARIES.get(kind),
                              page_checksum_verification=True)
        checksum = "" if kind == "agg_1m" else fmt.checksum(table)
    except Exception as exc:  # the bytes are in memory: any failure is the file's
        return Readback(len(data), error=(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
    return Readback(len(data), table.num_rows, tuple(table.column_names), checksum)


def _span(ms: int | None) -> str:
    if ms is None:
        return "?"
    return pa.scalar(ms, pa.timestamp("ms", tz="UTC")).as_py().strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(
        "000Z", "Z")


def origin(written: Written | None) -> str:
    """Where the file's readings came from and whether that is still there, in words."""
    if written is None:
        return ("no audited write names where it came from (it was written before the audit trail existed, "
                "or by another writer, whose audit trail is in its own data directory)")
    source = written.source
    if source.startswith("file://") and source.endswith(".wal"):
        path = Path(unquote(urlparse(source).path))
        if path.exists():
            return (f"the log segment it was sealed from, {path}, still exists: keep a copy of it, its records "
                    "hold these readings")
        return (f"it was sealed from the log segment {path}, which was deleted after the seal (every sealed "
                "segment is), so the lake held its only copy")
    if written.what == "compact":
        return (f"it was compacted from {source}, whose files were deleted after the compaction, so the lake "
                "held its only copy")
    return f"it was written from {source}, so the lake held its only copy"


def what_is_lost(f: LakeFile | None, key: str, written: Written | None, back: Readback) -> str:
    """The readings the lake no longer serves, in words."""
    rows = written.rows if written is not None else (back.rows if back.error is None else None)
    count = f"{rows} row(s)" if rows is not None else "its rows"
    if f is not None and f.stats is not None and f.stats.t_min_ms is not None:
        machines = (f" of machines {f.stats.machine_min}..{f.stats.machine_max}"
                    if f.stats.machine_min is not None else "")
        return f"{count}{machines} from {_span(f.stats.t_min_ms)} to {_span(f.stats.t_max_ms)}"
    if f is not None and f.hour is not None:
        return f"{count} of the hour {f.day} {f.hour}:00 UTC"
    if f is not None:
        return f"{count} of the day {f.day}"
    day = key.split("date=", 1)[1][:10] if "date=" in key else "?"
    return f"{count} of the day {day}"


# ---- I/O -----------------------------------------------------------------------------
@dataclass
class Damaged:
    key: str
    problem: str
    moved_to: str
    lost: str
    origin: str
    replaced_by_empty: bool

    def public(self) -> dict:
        return {"key": self.key, "problem": self.problem, "moved_to": self.moved_to, "lost": self.lost,
                "origin": self.origin, "replaced_by_empty": self.replaced_by_empty}


@dataclass
class VerifyReport:
    full: bool
    checked: int = 0          # files read now
    bytes_read: int = 0
    without_record: int = 0   # of those, with no audited write: parsing and columns only
    unchanged: int = 0        # verified before and unchanged since: not read
    left: int = 0             # due but left for the next run (over `max_bytes`)
    damaged: list[Damaged] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)  # keys under damaged/ now

    def public(self, *, with_unchanged: bool = True) -> dict:
        """As a job's report (`with_unchanged=False`: only counts of work done, so that a run
        that read nothing is not kept in the run history)."""
        report: dict = {"job": JOB, "full": self.full, "checked": self.checked, "bytes_read": self.bytes_read,
                        "without_record": self.without_record, "left": self.left, "damaged": len(self.damaged),
                        "damaged_files": [d.public() for d in self.damaged], "set_aside": list(self.set_aside)}
        if with_unchanged:
            report["unchanged"] = self.unchanged
        if self.set_aside:
            report["error"] = self.error()
        return report

    def error(self) -> str:
        shown = ", ".join(self.set_aside[:5]) + (f" and {len(self.set_aside) - 5} more" if len(self.set_aside) > 5
                                                 else "")
        found = f"{len(self.damaged)} found now; " if self.damaged else ""
        return (f"{len(self.set_aside)} damaged lake file(s) set aside ({found}{shown}): their readings are no "
                "longer served. Restore each from a backup or replica of the store to its original key (the next "
                "verify checks it against the audit trail) or have the publishers send its time range again, "
                "then delete its copy under damaged/; until then this job reports a failure")


Listed = list[tuple[LakeFile | None, ObjectInfo]]


def _visible(store: ObjectStore, writer_id: str, hidden: set[int],
             partition: str | None = None) -> tuple[Listed, dict[str, LakeFile]]:
    """The files a reader reads now (of every kind, or of one `partition`), from a live listing
    of the store itself (not the catalog, whose sizes and times are those written), and every
    parsed lake file by key. The visibility rules never look beyond a file's partition."""
    inner = catalog.unwrap(store)
    listing = getattr(store, "objects_with_stats", None)
    chosen: Listed = []
    parsed_all: dict[str, LakeFile] = {}
    for kind in KINDS if partition is None else (_kind(partition),):
        prefix = f"{kind}/" if partition is None else partition
        infos = inner.objects(prefix)  # type: ignore[attr-defined]
        if kind == "agg_1m":
            chosen += [(None, o) for o in infos if o.key.endswith(".parquet") and o.readable]
            continue
        stats = {}
        if listing is not None and partition is not None:  # the catalog's time and machine ranges, for the log
            stats = {o.key: s for o, s in listing(prefix)}
        by_key = {o.key: o for o in infos}
        files = [f for f in (layout.parse(o.key, size=o.size, last_modified_ms=o.last_modified_ms,
                                          archived=o.archived, storage_class=o.storage_class,
                                          restored=o.restored, restoring=o.archived and o.restore_ongoing,
                                          stats=stats.get(o.key))
                             for o in infos) if f is not None]
        parsed_all.update((f.key, f) for f in files)
        chosen += [(f, by_key[f.key]) for f in layout.visible(files, writer=writer_id, hidden_segments=hidden)]
    return chosen, parsed_all


def _kind(key: str) -> str:
    return key.split("/", 1)[0]


def _aside_key(store: ObjectStore, key: str, at_ms: int) -> str:
    aside = DAMAGED_PREFIX + key
    return f"{aside}.{at_ms}" if store.exists(aside) else aside  # an earlier damaged copy stays


def _sources_remain(f: LakeFile, files: dict[str, LakeFile]) -> bool:
    return any(o.partition == f.partition and o.writer == f.writer and o.set_id != f.set_id
               and f.lo <= o.lo and o.hi <= f.hi for o in files.values())


def _empty_part(f: LakeFile) -> pa.Table:
    return raw_schema(f.encoding).empty_table()


def set_aside(*, store: ObjectStore, audit: AuditLog, key: str, data: bytes, f: LakeFile | None,
              files: dict[str, LakeFile], written: Written | None, at_ms: int) -> tuple[str, bool]:
    """Copy, verify, audit, then remove a damaged file; (the copy's key, whether the original
    was replaced by an empty part instead of deleted)."""
    url = store.url.rstrip("/")
    aside = _aside_key(store, key, at_ms)
    store.put(aside, data)
    if hashlib.sha256(store.get(aside)).digest() != hashlib.sha256(data).digest():
        raise OSError(f"the copy of the damaged file {url}/{key} at {url}/{aside} did not read back as written; "
                      "the file is left where it is")
    rows = written.rows if written is not None else 0
    digest = "sha256:" + hashlib.sha256(data).hexdigest()  # of the bytes: they may not parse
    copy = Move("damaged", f"{url}/{key}", f"{url}/{aside}", rows, len(data), digest)
    # One part of several of a compacted set whose sources are gone: replaced by an empty part,
    # so that the set stays complete and its other parts are still read (module docstring).
    placeholder = (f is not None and f.compacted and f.parts > 1 and not _sources_remain(f, files))
    if placeholder and f is not None:
        empty = _empty_part(f)
        empty_bytes = fmt.to_parquet_bytes(empty)
        audit.record(JOB, [copy], at_ms)
        store.put(key, empty_bytes)
        back = read_back("raw", store.get(key))
        if back.error is not None or back.rows != 0:
            raise OSError(f"the empty part written over the damaged file {url}/{key} did not read back")
        audit.record(JOB, [Move("damaged", f"{url}/{key}", f"{url}/{key}", 0, len(empty_bytes),
                                fmt.checksum(empty))], at_ms)
    else:
        # The record of both is durable before the original goes.
        audit.record(JOB, [copy, Move("damaged", f"{url}/{key}", f"(deleted; copy at {url}/{aside})", rows,
                                      len(data), digest)], at_ms)
        store.delete(key)
    catalog.flush(store)
    return aside, placeholder


def _save(path: Path, seen: dict[str, Seen], store_url: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        handle.write(dump_state(seen, store_url))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def verify_lake(*, store: ObjectStore, audit: AuditLog, state_dir: Path, writer_id: str,
                hidden_segments: Callable[[], set[int]], lock: threading.Lock, at_ms: int, full: bool = False,
                max_bytes: int | None = None) -> VerifyReport:
    """Verify the lake's files (module docstring); set damaged ones aside. `lock` is held by
    every job that writes or deletes this writer's files (the seal lock): the files are read
    without it, and a file found damaged is read and judged again under it before it moves.
    `hidden_segments`: this writer's log segments (their files are not read yet).
    `max_bytes`: stop reading past this many bytes (the rest is left for the next run)."""
    url = store.url.rstrip("/")
    state_path = state_dir / STATE_FILE
    seen = load_state(state_path.read_bytes(), url) if state_path.exists() else {}
    with lock:
        hidden = hidden_segments()
    chosen, _ = _visible(store, writer_id, hidden)
    # Read after listing: every file listed visible has its audit record by now (a write is
    # audited before its file becomes visible, except a compacted set between its write and
    # its record, which is judged again once the record is there).
    writes = latest_writes(audit.path.read_bytes().splitlines() if audit.path.exists() else [], url)
    listed = {info.key: (f, info) for f, info in chosen}
    todo = due([(i.key, i.size, i.last_modified_ms) for _, i in chosen], seen, writes, full=full)
    report = VerifyReport(full=full, unchanged=len(chosen) - len(todo))
    seen = {k: v for k, v in seen.items() if k in listed}  # forget files that are gone
    for n, key in enumerate(todo):
        if max_bytes is not None and report.bytes_read >= max_bytes:
            report.left = len(todo) - n
            break
        f, info = listed[key]
        kind = _kind(key)
        try:
            data = store.get(key)
        except (ObjectMissing, ObjectArchived):
            continue  # deleted (compacted away) or archived since the listing: not served now
        written = writes.get(key)
        back = read_back(kind, data)
        report.checked += 1
        report.bytes_read += len(data)
        report.without_record += written is None
        problem = judge(kind, written, back)
        if problem is None:
            seen[key] = Seen(info.size, info.last_modified_ms, written.checksum if written else "")
        else:
            found = _confirm_and_set_aside(store=store, audit=audit, key=key, info=info, f=f, lock=lock,
                                           writer_id=writer_id, hidden_segments=hidden_segments, at_ms=at_ms,
                                           kind=kind)
            seen.pop(key, None)
            if found is not None:
                report.damaged.append(found)
        if (n + 1) % SAVE_EVERY == 0:
            _save(state_path, seen, url)
    _save(state_path, seen, url)
    report.set_aside = sorted(o.key for o in catalog.unwrap(store).objects(DAMAGED_PREFIX))  # type: ignore[attr-defined]
    return report


def _confirm_and_set_aside(*, store: ObjectStore, audit: AuditLog, key: str, info: ObjectInfo, f: LakeFile | None,
                           lock: threading.Lock, writer_id: str, hidden_segments: Callable[[], set[int]],
                           at_ms: int, kind: str) -> Damaged | None:
    """Under the lock: the file is still the one read and still damaged; then set it aside."""
    url = store.url.rstrip("/")
    with lock:
        try:
            now = store.info(key)
        except ObjectMissing:
            return None
        if (now.size, now.last_modified_ms) != (info.size, info.last_modified_ms):
            return None  # replaced meanwhile: judged again at the next run
        chosen, parsed_all = _visible(store, writer_id, hidden_segments(), key.rsplit("/", 1)[0] + "/")
        if key not in {i.key for _, i in chosen}:
            return None  # no longer read (hidden by a compacted set since): left to its job
        audit_lines = audit.path.read_bytes().splitlines() if audit.path.exists() else []
        written = latest_writes(audit_lines, url).get(key)
        data = store.get(key)
        back = read_back(kind, data)
        problem = judge(kind, written, back)
        if problem is None:
            return None
        f = parsed_all.get(key, f)
        lost = what_is_lost(f, key, written, back)
        came_from = origin(written)
        aside, placeholder = set_aside(store=store, audit=audit, key=key, data=data, f=f, files=parsed_all,
                                       written=written, at_ms=at_ms)
    removed = ("replaced by an empty part of its compacted set (so the set's other parts are still read)"
               if placeholder else "removed from the lake")
    log.error("damaged lake file %s/%s: %s. It is never served as good data: copied to %s/%s and %s. Its %s are "
              "lost from the lake: %s. To bring them back, restore the file from a backup or replica of the store "
              "to %s (the next verify checks it against the audit trail), or have the publishers send that range "
              "again; then delete %s/%s", url, key, problem, url, aside, removed, lost, came_from, key, url, aside)
    return Damaged(key, problem, f"{url}/{aside}", lost, came_from, placeholder)
