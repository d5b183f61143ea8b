"""Names of the lake's files, and which of them a reader sees. Pure: no I/O.

Layout (CONTRACT.md section 7): `{kind}/date=YYYY-MM-DD/hour=HH/{name}` for raw readings,
`{kind}/date=YYYY-MM-DD/{name}` for quarantine and context. File names derive from the data,
so that writing again after a crash replaces instead of adding:

- sealed from log segment N:     `{writer}-{N:012d}.{enc}.parquet` (raw; one file per value
  encoding `enc`, see tiers.parquetformat) or `{writer}-{N:012d}.parquet` (quarantine,
  context, and raw files of earlier versions, which are all DOUBLE);
- compacted from segments lo..hi: `{writer}.{lo:012d}-{hi:012d}.{i}of{n}.{enc}.parquet`, the
  i-th of the n files (one per encoding) that together hold every reading of this writer's
  files of that hour with segments in lo..hi.

Writer ids hold letters, digits, '-' and '_' only, so the '.' after the writer tells a
compacted name from a sealed one without ambiguity.

What a reader sees (`visible`), so that every reading is read exactly once at every step of
a move:
1. this writer's sealed files of segments still in the log are hidden (their rows are read
   from the log);
2. a compacted set is *complete* when all n of its files exist; an incomplete set (a crash
   while writing it) is hidden, and its sources stay visible;
3. a file whose segment range lies inside a complete set's range (same writer and hour) and
   which is not newer than that set is hidden: the set holds its rows. (The age test keeps a
   file written after the compaction visible even if a log restarted its numbering.)
4. archived objects (GLACIER, DEEP_ARCHIVE) are left out: they cannot be read until restored.
   A restored one (its restored copy can be read now) is an ordinary file of its partition,
   under rules 1-3 like any other, and is left out again when its copy expires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from tiers.parquetformat import DOUBLE, ENCODINGS

if TYPE_CHECKING:
    from tiers.catalog import FileStats

_ENC = "|".join(ENCODINGS)
_SEALED = re.compile(rf"^(?P<writer>[A-Za-z0-9_-]+)-(?P<segment>\d{{12}})(?:\.(?P<enc>{_ENC}))?\.parquet$")
_COMPACTED = re.compile(rf"^(?P<writer>[A-Za-z0-9_-]+)\.(?P<lo>\d{{12}})-(?P<hi>\d{{12}})"
                        rf"\.(?P<part>\d+)of(?P<parts>\d+)\.(?P<enc>{_ENC})\.parquet$")
_PARTITION = re.compile(r"^(?P<kind>[a-z_0-9]+)/date=(?P<day>\d{4}-\d{2}-\d{2})(?:/hour=(?P<hour>\d{2}))?/(?P<name>[^/]+)$")


@dataclass(frozen=True)
class LakeFile:
    key: str
    kind: str
    day: str
    hour: str | None
    writer: str
    lo: int  # segment range; lo == hi for a sealed file
    hi: int
    encoding: str
    compacted: bool
    part: int = 1
    parts: int = 1
    size: int = 0
    last_modified_ms: int = 0
    archived: bool = False  # in an archive class, restored or not
    storage_class: str = "STANDARD"
    restored: bool = False  # archived, and a restored copy can be read now
    restoring: bool = False  # archived, and a restore is running
    stats: FileStats | None = None  # from the catalog: rows, time and machine ranges

    @property
    def readable(self) -> bool:
        return not self.archived or self.restored

    @property
    def partition(self) -> str:
        return f"{self.kind}/date={self.day}" + (f"/hour={self.hour}" if self.hour is not None else "")

    @property
    def set_id(self) -> tuple:
        """Identifies a compacted set (or a sealed segment's files) within its writer and hour."""
        return (self.partition, self.writer, self.lo, self.hi, self.compacted)


class _Where(TypedDict):
    """The fields of a LakeFile that come from its key's partition and its listing."""

    key: str
    kind: str
    day: str
    hour: str | None
    size: int
    last_modified_ms: int
    archived: bool
    storage_class: str
    restored: bool
    restoring: bool
    stats: FileStats | None


def sealed_name(writer: str, segment: int, encoding: str | None = None) -> str:
    return f"{writer}-{segment:012d}" + (f".{encoding}" if encoding else "") + ".parquet"


def compacted_name(writer: str, lo: int, hi: int, part: int, parts: int, encoding: str) -> str:
    return f"{writer}.{lo:012d}-{hi:012d}.{part}of{parts}.{encoding}.parquet"


def hour_prefix(day: str, hour: str) -> str:
    return f"raw/date={day}/hour={hour}/"


def parse(key: str, *, size: int = 0, last_modified_ms: int = 0, archived: bool = False,
          storage_class: str = "STANDARD", restored: bool = False, restoring: bool = False,
          stats: FileStats | None = None) -> LakeFile | None:
    """The file's place in the lake, or None for an object that is not a lake file."""
    where = _PARTITION.match(key)
    if not where:
        return None
    name = where["name"]
    common = _Where(key=key, kind=where["kind"], day=where["day"], hour=where["hour"], size=size,
                    last_modified_ms=last_modified_ms, archived=archived, storage_class=storage_class,
                    restored=restored, restoring=restoring, stats=stats)
    sealed = _SEALED.match(name)
    if sealed:
        segment = int(sealed["segment"])
        return LakeFile(writer=sealed["writer"], lo=segment, hi=segment, encoding=sealed["enc"] or DOUBLE,
                        compacted=False, **common)
    compacted = _COMPACTED.match(name)
    if compacted:
        part, parts = int(compacted["part"]), int(compacted["parts"])
        if not 1 <= part <= parts:
            return None
        return LakeFile(writer=compacted["writer"], lo=int(compacted["lo"]), hi=int(compacted["hi"]),
                        encoding=compacted["enc"], compacted=True, part=part, parts=parts, **common)
    return None


def segment_of(key: str) -> tuple[str, int] | None:
    """(writer, segment) of a file written by sealing, from its name (None for compacted)."""
    match = _SEALED.match(key.rsplit("/", 1)[-1])
    return (match["writer"], int(match["segment"])) if match else None


def complete_sets(files: list[LakeFile]) -> dict[tuple, int]:
    """Compacted sets with all their parts present: set_id -> the time its first part was written."""
    parts: dict[tuple, set[int]] = {}
    expected: dict[tuple, int] = {}
    started: dict[tuple, int] = {}
    for f in files:
        if f.compacted:
            parts.setdefault(f.set_id, set()).add(f.part)
            expected[f.set_id] = f.parts
            started[f.set_id] = min(started.get(f.set_id, f.last_modified_ms), f.last_modified_ms)
    return {sid: started[sid] for sid, got in parts.items() if len(got) == expected[sid]}


def visible(files: list[LakeFile], *, writer: str, hidden_segments: set[int] | frozenset[int]) -> list[LakeFile]:
    """The files a reader must read so that each reading is seen once (rules in the docstring)."""
    complete = complete_sets(files)
    covering: dict[tuple[str, str], list[tuple[int, int, int, tuple]]] = {}
    for sid, started in complete.items():
        partition, owner, lo, hi, _ = sid
        covering.setdefault((partition, owner), []).append((lo, hi, started, sid))
    seen = []
    for f in files:
        if f.writer == writer and not f.compacted and f.lo in hidden_segments:
            continue
        if f.compacted and f.set_id not in complete:
            continue
        covered = any(lo <= f.lo and f.hi <= hi and sid != f.set_id and f.last_modified_ms <= started
                      for lo, hi, started, sid in covering.get((f.partition, f.writer), ()))
        if covered or not f.readable:
            continue
        seen.append(f)
    return seen
