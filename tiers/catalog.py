"""The lake's catalog: what each day of each kind of data holds, kept beside the data, so
that a reader picks the objects a question can touch without listing the lake or opening a
file (issue 16).

`CatalogedStore` wraps the cold store. Per kind of data (`raw`, `agg_1m`, `context`,
`alerts`, `quarantine`) and day it keeps one manifest under `_catalog/{kind}/`: every object
of that day with its size and time, and for Parquet files their rows, time range and machine
range (from the footer; `put` reads it from the bytes it writes, so sealing costs no extra
request). `days(kind)` names the days there are, from one listing of the catalog's folder,
so that a question about the last minutes touches one or two days on a lake of any age; the
statistics let a reader leave out a file that cannot hold an answer without opening it
(archived ones included).

What a day holds now comes from where the truth is cheapest:
- a local store: the manifest, with each object's storage class and restore state from the
  store's own records (two small files, read again only when they change): exact;
- S3: a listing of that day (one request per 1,000 objects), whose statistics are taken
  from the manifest for every object of the same key, size and time. S3 moves objects
  between classes, finishes restores and expires copies on its own time; a listing sees
  that, a manifest would not.

It never disagrees with the files:
- Before anything changes a day's objects (put, delete, a storage-class transition, a
  restore request), a marker `_catalog/{kind}/date=D.dirty.{host}.{pid}.{id}` is written. A
  day with a marker is listed live, as if there were no catalog. `flush` then rebuilds the
  manifest of each day this process changed from a live listing and removes its own markers
  (and those of processes of this host that are gone), in that order; a crash in between
  leaves the marker, so readers list that day live until a later flush or `repair`.
- Manifests are immutable generations (`date=D.{gen:08d}.json`): a reader caches each by its
  key; a new generation is written before the old one is deleted.
- Until `build` has written `_catalog/{kind}/_built.json` (a pipeline's start does), every
  listing of that kind is live: a lake written before the catalog existed reads as before.
- Rebuilding a day is serialised between the processes of this machine (an flock). Writers
  sharing one lake from several machines would need conditional writes: not supported.

Objects added or deleted behind fabtier's back in a local lake are not seen until the day's
next rebuild; `build` (every start) rebuilds every day.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import io
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from core.protocols import ObjectStore
from core.records import ObjectInfo, RestoreRequest

log = logging.getLogger(__name__)

PREFIX = "_catalog/"
VERSION = 1
# The kinds of data the catalog describes, and the column that gives each its time range.
TIME_COLUMNS = {"raw": "ts", "agg_1m": "minute", "context": "ts", "alerts": "ts", "quarantine": "received_at"}
_OBJECT = re.compile(r"^(?P<kind>[a-z_0-9]+)/(?:date=(?P<day>\d{4}-\d{2}-\d{2})(?:/|$))?")
_ENTRY = re.compile(r"^date=(?P<day>\d{4}-\d{2}-\d{2})\.(?:(?P<gen>\d{8})\.json"
                    r"|dirty\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]+)$")
_CLOCK_STEP_NS = 50_000_000  # file times move in coarse steps (a kernel tick): this is well above
_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


@dataclass(frozen=True)
class FileStats:
    """What a Parquet file's footer says: rows, and the ranges of its time and machine columns."""

    rows: int
    t_min_ms: int | None = None
    t_max_ms: int | None = None
    machine_min: str | None = None
    machine_max: str | None = None


@dataclass(frozen=True)
class Manifest:
    day: str
    gen: int
    written_ms: int
    objects: tuple[tuple[ObjectInfo, FileStats | None], ...]


@dataclass(frozen=True)
class _View:
    """One listing of `_catalog/{kind}/`: the newest manifest per day, the markers per day."""

    built: bool
    manifests: dict[str, tuple[str, int]]  # day -> (key, gen)
    stale: dict[str, list[str]]  # day -> keys of older generations
    markers: dict[str, list[str]]  # day -> marker keys


def _ms(value) -> int | None:
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    return None


def footer_stats(parquet: pq.ParquetFile, time_column: str) -> FileStats:
    meta = parquet.metadata
    names = parquet.schema_arrow.names
    t_lo: int | None = None
    t_hi: int | None = None
    m_lo: str | None = None
    m_hi: str | None = None
    complete = True
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for column, is_time in ((time_column, True), ("machine", False)):
            if column not in names:
                continue
            stats = group.column(names.index(column)).statistics
            if stats is None or not stats.has_min_max:
                complete = False
                continue
            if is_time:
                lo_ms, hi_ms = _ms(stats.min), _ms(stats.max)
                if lo_ms is None or hi_ms is None:
                    complete = False
                    continue
                t_lo = lo_ms if t_lo is None else min(t_lo, lo_ms)
                t_hi = hi_ms if t_hi is None else max(t_hi, hi_ms)
            elif isinstance(stats.min, str) and isinstance(stats.max, str):
                m_lo = stats.min if m_lo is None else min(m_lo, stats.min)
                m_hi = stats.max if m_hi is None else max(m_hi, stats.max)
            else:
                complete = False
    if not complete:  # a range that leaves out a row group would prune rows away
        t_lo = t_hi = m_lo = m_hi = None
    return FileStats(meta.num_rows, t_lo, t_hi, m_lo, m_hi)


def _object_json(info: ObjectInfo, stats: FileStats | None) -> dict:
    entry: dict = {"key": info.key, "size": info.size, "mtime": info.last_modified_ms, "class": info.storage_class}
    if info.restore_ongoing:
        entry["restoring"] = True
    if info.restore_expiry_ms is not None:
        entry["restored_until"] = info.restore_expiry_ms
    if stats is not None:
        entry["stats"] = [stats.rows, stats.t_min_ms, stats.t_max_ms, stats.machine_min, stats.machine_max]
    return entry


def _object_from_json(entry: dict) -> tuple[ObjectInfo, FileStats | None]:
    info = ObjectInfo(entry["key"], int(entry["size"]), int(entry["mtime"]), entry["class"],
                      bool(entry.get("restoring", False)), entry.get("restored_until"))
    stats = entry.get("stats")
    return info, (FileStats(*stats) if stats is not None else None)


def kind_and_day(key: str) -> tuple[str, str | None] | None:
    """(kind, day) of a key or prefix under a cataloged kind; None for anything else."""
    match = _OBJECT.match(key)
    if not match or match["kind"] not in TIME_COLUMNS:
        return None
    return match["kind"], match["day"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CatalogedStore:
    """An ObjectStore whose lake listings come from the catalog (module docstring). Every
    other call goes to `inner`, the store itself."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        # A store whose records say each object's class and restore state (a local store):
        # its manifests are read as they are; else each day read is listed (module docstring).
        self._recorded_state = getattr(inner, "recorded_state", None)
        self._dirty: set[tuple[str, str]] = set()
        self._markers: dict[tuple[str, str], str] = {}
        self._stats: dict[str, FileStats] = {}  # written by this process, not in a manifest yet
        self._manifests: dict[str, Manifest] = {}  # manifest key -> parsed (immutable objects)
        self._views: dict[str, tuple[tuple, _View]] = {}  # kind -> (folder stamp, view)
        self._forked = False
        self._mutex = threading.RLock()
        digest = hashlib.sha1(inner.url.encode()).hexdigest()[:16]
        self._lock_path = Path(tempfile.gettempdir()) / f"fabtier-catalog-{digest}.lock"

    def __getattr__(self, name: str):
        # The inner store's own attributes (root, client, clock, restore_times, ...).
        return getattr(self.inner, name)

    def after_fork(self) -> None:
        """In a forked child: the parent's markers are the parent's, and so is its lock."""
        self._dirty, self._markers, self._stats, self._views = set(), {}, {}, {}
        self._forked = True
        self._mutex = threading.RLock()
        after_fork = getattr(self.inner, "after_fork", None)
        if after_fork is not None:
            after_fork()

    # ---- changes: marker first -----------------------------------------------------
    def _mark(self, key: str) -> None:
        where = kind_and_day(key)
        if where is None or where[1] is None:
            return
        kind, day = where[0], where[1]
        with self._mutex:
            if (kind, day) in self._dirty:
                return
            marker = f"{PREFIX}{kind}/date={day}.dirty.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:12]}"
            self.inner.put(marker, b"")
            self._dirty.add((kind, day))
            self._markers[(kind, day)] = marker

    def put(self, key: str, data: bytes) -> None:
        self._mark(key)
        self.inner.put(key, data)
        where = kind_and_day(key)
        if where is not None and key.endswith(".parquet"):
            try:
                self._stats[key] = footer_stats(pq.ParquetFile(io.BytesIO(data)), TIME_COLUMNS[where[0]])
            except Exception:  # not Parquet after all: the catalog notes it without statistics
                self._stats.pop(key, None)

    def delete(self, key: str) -> None:
        self._mark(key)
        self.inner.delete(key)
        self._stats.pop(key, None)

    def set_storage_class(self, key: str, storage_class: str) -> None:
        self._mark(key)
        self.inner.set_storage_class(key, storage_class)

    def restore(self, key: str, *, keep_s: float, speed: str) -> RestoreRequest:
        self._mark(key)
        return self.inner.restore(key, keep_s=keep_s, speed=speed)

    # ---- the rest as the store does it ----------------------------------------------
    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def info(self, key: str) -> ObjectInfo:
        return self.inner.info(key)

    def arrow_filesystem(self):
        return self.inner.arrow_filesystem()

    # ---- listing ---------------------------------------------------------------------
    def list(self, prefix: str) -> builtins.list[tuple[str, int]]:
        return [(o.key, o.size) for o in self.objects(prefix)]

    def objects(self, prefix: str) -> builtins.list[ObjectInfo]:
        return [info for info, _ in self.objects_with_stats(prefix)]

    def objects_with_stats(self, prefix: str) -> builtins.list[tuple[ObjectInfo, FileStats | None]]:
        """Objects under `prefix` (as `objects` lists them), each with its file statistics
        where the catalog has them."""
        where = kind_and_day(prefix)
        if where is None or not (prefix.endswith("/") or prefix == where[0]):
            # The catalog's own objects are the catalog's business, not the lake's.
            return [(o, self._stats.get(o.key)) for o in self.inner.objects(prefix) if not o.key.startswith(PREFIX)]
        kind, day = where
        view = self._view(kind)
        if not view.built:
            return [(o, self._stats.get(o.key)) for o in self.inner.objects(prefix)]
        days = [day] if day is not None else sorted(set(view.manifests) | set(view.markers))
        if self._recorded_state is None:
            # S3: listed as asked, in one paginated listing (not one a day), with the
            # statistics of the manifests of the days it covers.
            manifests = [self._manifest(view.manifests[d][0]) for d in days if d in view.manifests]
            return self._live(prefix, manifests)
        found = []
        for d in days:
            found += [(o, s) for o, s in self._day(kind, d, view) if o.key.startswith(prefix)]
        return sorted(found, key=lambda item: item[0].key)

    def days(self, kind: str) -> builtins.list[str] | None:
        """The days of `kind` there is data of (None: no catalog; list the lake)."""
        view = self._view(kind)
        return sorted(set(view.manifests) | set(view.markers)) if view.built else None

    def _view(self, kind: str) -> _View:
        """One listing of `_catalog/{kind}/`; on a local store reused while the folder is
        unchanged (its modification time, taken only when it is older than the listing by
        more than the file system's clock step, so that a change in the same tick is seen)."""
        stamp_of = getattr(self.inner, "folder_stamp", None)
        stamp = stamp_of(f"{PREFIX}{kind}/") if stamp_of is not None else None
        if stamp is not None:
            with self._mutex:
                cached = self._views.get(kind)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        started_ns = time.time_ns()
        view = self._list_view(kind)
        if stamp is not None and stamp[0] < started_ns - _CLOCK_STEP_NS:
            with self._mutex:
                self._views[kind] = (stamp, view)
        return view

    def _list_view(self, kind: str) -> _View:
        built = False
        manifests: dict[str, tuple[str, int]] = {}
        stale: dict[str, list[str]] = {}
        markers: dict[str, list[str]] = {}
        base = f"{PREFIX}{kind}/"
        for key, _ in self.inner.list(base):
            name = key[len(base):]
            if name == "_built.json":
                built = True
                continue
            match = _ENTRY.match(name)
            if not match:
                continue
            day = match["day"]
            if match["gen"] is None:
                markers.setdefault(day, []).append(key)
                continue
            gen = int(match["gen"])
            if day in manifests and manifests[day][1] > gen:
                stale.setdefault(day, []).append(key)
                continue
            if day in manifests:
                stale.setdefault(day, []).append(manifests[day][0])
            manifests[day] = (key, gen)
        return _View(built, manifests, stale, markers)

    def _manifest(self, key: str) -> Manifest:
        with self._mutex:
            cached = self._manifests.get(key)
        if cached is not None:
            return cached
        raw = orjson.loads(self.inner.get(key))
        manifest = Manifest(raw["day"], int(raw["gen"]), int(raw["written_ms"]),
                            tuple(_object_from_json(e) for e in raw["objects"]))
        with self._mutex:
            if len(self._manifests) > 4096:
                self._manifests.clear()
            self._manifests[key] = manifest
        return manifest

    def _now_ms(self) -> int:
        clock = getattr(self.inner, "clock", None)
        if clock is not None:
            return int(clock.now_ms())
        return int(time.time() * 1000)

    def _day(self, kind: str, day: str, view: _View) -> builtins.list[tuple[ObjectInfo, FileStats | None]]:
        entry = view.manifests.get(day)
        manifest = self._manifest(entry[0]) if entry is not None else None
        if day in view.markers or manifest is None or self._recorded_state is None:
            return self._live(f"{kind}/date={day}/", [manifest] if manifest is not None else [])
        infos = self._recorded_state([info for info, _ in manifest.objects])
        return [(info, stats) for info, (_, stats) in zip(infos, manifest.objects, strict=True)]

    def _live(self, prefix: str, manifests: builtins.list[Manifest]) -> builtins.list[tuple[ObjectInfo, FileStats | None]]:
        """A listing of the store, each object with the statistics a manifest keeps for the
        same key, size and time (or that this process noted when it wrote it)."""
        known = {info.key: (info, stats) for manifest in manifests for info, stats in manifest.objects}
        out = []
        for info in self.inner.objects(prefix):
            stats = self._stats.get(info.key)
            old = known.get(info.key)
            if stats is None and old is not None and (old[0].size, old[0].last_modified_ms) == (
                    info.size, info.last_modified_ms):
                stats = old[1]
            out.append((info, stats))
        return out

    # ---- keeping it ------------------------------------------------------------------
    @contextlib.contextmanager
    def _machine_lock(self) -> Iterator[None]:
        with self._mutex, open(self._lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _rebuild(self, kind: str, day: str, view: _View, *, own_marker: str | None) -> None:
        """Under the machine lock: the day's manifest from a live listing, then the markers
        that no running process holds (ours, and those of processes of this host that are
        gone) and the older generations are deleted."""
        removable = [m for m in view.markers.get(day, []) if m == own_marker or self._gone(kind, m)]
        entry = view.manifests.get(day)
        old = self._manifest(entry[0]) if entry is not None else None
        objects = self._live(f"{kind}/date={day}/", [old] if old is not None else [])
        objects = [(info, stats if stats is not None else self._footer(kind, info)) for info, stats in objects]
        gen = entry[1] + 1 if entry is not None else 1
        if old is not None and old.objects == tuple(objects) and not view.stale.get(day):
            objects, entry = [], None  # as it was, and trusted as it is: no new generation
        elif objects:
            document = {"version": VERSION, "kind": kind, "day": day, "gen": gen, "written_ms": self._now_ms(),
                        "objects": [_object_json(i, s) for i, s in objects]}
            self.inner.put(f"{PREFIX}{kind}/date={day}.{gen:08d}.json", orjson.dumps(document))
        for key in ([entry[0]] if entry is not None else []) + view.stale.get(day, []):
            self.inner.delete(key)
        for marker in removable:
            self.inner.delete(marker)
        for info, _ in objects:
            self._stats.pop(info.key, None)

    def _footer(self, kind: str, info: ObjectInfo) -> FileStats | None:
        if not info.key.endswith(".parquet") or not info.readable:
            return None
        if self._forked and getattr(self.inner, "recorded_state", None) is None:
            # No Arrow S3 file system in a forked child (tiers.cold.ColdLake.after_fork): the
            # file goes without statistics until a rebuild in a process that can read it.
            return None
        try:
            filesystem, root = self.inner.arrow_filesystem()
            with filesystem.open_input_file(f"{root}/{info.key}") as handle:
                return footer_stats(pq.ParquetFile(handle), TIME_COLUMNS[kind])
        except Exception as exc:  # unreadable now (being replaced, damaged): no statistics, read it whole
            log.debug("no statistics for %s: %s", info.key, exc)
            return None

    def flush(self) -> None:
        """Rebuild the manifest of every day this process changed since the last flush."""
        with self._mutex:
            dirty = sorted(self._dirty)
            if not dirty:
                return
            with self._machine_lock():
                views: dict[str, _View] = {}
                for kind, day in dirty:
                    view = views.get(kind) or self._view(kind)
                    views[kind] = view
                    self._rebuild(kind, day, view, own_marker=self._markers.get((kind, day)))
                    self._dirty.discard((kind, day))
                    self._markers.pop((kind, day), None)

    def repair(self) -> int:
        """Rebuild the days that carry markers of processes of this host that are gone (a
        crash between a change and its manifest); how many days were rebuilt."""
        rebuilt = 0
        with self._mutex, self._machine_lock():
            for kind in TIME_COLUMNS:
                view = self._view(kind)
                for day, markers in sorted(view.markers.items()):
                    if (kind, day) in self._dirty or not any(self._gone(kind, m) for m in markers):
                        continue  # a running process is changing it: its flush rebuilds it
                    self._rebuild(kind, day, view, own_marker=None)
                    rebuilt += 1
        return rebuilt

    @staticmethod
    def _gone(kind: str, marker: str) -> bool:
        match = _ENTRY.match(marker[len(f"{PREFIX}{kind}/"):])
        return bool(match and match["host"] == _HOST and not _pid_alive(int(match["pid"])))

    def build(self, kinds: Iterable[str] = tuple(TIME_COLUMNS)) -> int:
        """Rebuild every day of `kinds` from a live listing (a start does this: files changed
        while no fabtier ran, or before the catalog existed, are seen); how many days."""
        self.flush()
        days = 0
        with self._mutex, self._machine_lock():
            for kind in kinds:
                view = self._view(kind)
                listed = {d for o in self.inner.objects(f"{kind}/") if (w := kind_and_day(o.key)) and (d := w[1])}
                for day in sorted(listed | set(view.manifests) | set(view.markers)):
                    self._rebuild(kind, day, view, own_marker=None)
                    days += 1
                if not view.built:
                    self.inner.put(f"{PREFIX}{kind}/_built.json", orjson.dumps({"version": VERSION}))
        return days


def flush(store: object) -> None:
    """Rebuild the catalog's days that `store` changed (nothing for a store without one)."""
    if isinstance(store, CatalogedStore):
        store.flush()


def repair(store: object) -> int:
    """`CatalogedStore.repair` of `store` (0 for a store without a catalog)."""
    return store.repair() if isinstance(store, CatalogedStore) else 0


def unwrap(store: object) -> object:
    """The store itself, under its catalog (to ask what kind of store it is)."""
    return store.inner if isinstance(store, CatalogedStore) else store


def build(store: object) -> int:
    """`CatalogedStore.build` of `store` (0 for a store without a catalog)."""
    return store.build() if isinstance(store, CatalogedStore) else 0
