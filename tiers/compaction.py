"""Which of a writer's small files to merge, and which leftovers to delete. Pure: no I/O.

Sealing writes a few files per log segment and hour; an hour sealed every minute ends up
with hundreds of small objects, which S3's archive classes charge per object (and skip
below 128 KB) and which Athena reads slowly. Once an hour has settled (`settle_ms` after its
end), its files are merged into sets of about `target_bytes`.

A merge takes a run of this writer's visible files of one hour that are adjacent in segment
order, all of segments already sealed (below every segment still in the log): a compacted
set names its segment range, and hides every file in that range, so the range must not
contain a segment that could still write into the hour. A file already `target_bytes` big
ends a run. Hours with an archived file of this writer are left alone (it cannot be read,
so it cannot be merged, and a range around it would hide it).
"""

from __future__ import annotations

from dataclasses import dataclass

from tiers import layout
from tiers.layout import LakeFile
from tiers.parquetformat import hour_bounds_ms


@dataclass(frozen=True)
class CompactionTask:
    day: str
    hour: str
    writer: str
    lo: int
    hi: int
    sources: tuple[LakeFile, ...]

    @property
    def prefix(self) -> str:
        return layout.hour_prefix(self.day, self.hour)

    @property
    def source_bytes(self) -> int:
        return sum(f.size for f in self.sources)


@dataclass(frozen=True)
class CompactionPlan:
    tasks: tuple[CompactionTask, ...]
    # Files no reader needs any more: covered by a complete compacted set, or parts of a set
    # whose writing was interrupted. Deleting them is safe at any time.
    garbage: tuple[LakeFile, ...]


def plan(files: list[LakeFile], *, writer: str, hidden_segments: set[int], now_ms: int,
         settle_ms: int, target_bytes: int) -> CompactionPlan:
    """What to merge among `files` (raw files of any writers, any hours)."""
    first_unsealed = min(hidden_segments) if hidden_segments else None
    by_hour: dict[tuple[str, str], list[LakeFile]] = {}
    for f in files:
        if f.kind == "raw" and f.hour is not None and f.writer == writer:
            by_hour.setdefault((f.day, f.hour), []).append(f)
    tasks: list[CompactionTask] = []
    garbage: list[LakeFile] = []

    def close_run(day: str, hour: str, run: list[list[LakeFile]]) -> None:
        if len(run) >= 2:
            members = tuple(f for unit in run for f in unit)
            tasks.append(CompactionTask(day, hour, writer, run[0][0].lo, run[-1][0].hi, members))
        run.clear()

    for (day, hour), own in sorted(by_hour.items()):
        seen = {f.key for f in layout.visible(own, writer=writer, hidden_segments=hidden_segments)}
        for f in own:
            unsealed = not f.compacted and f.lo in hidden_segments
            if f.key not in seen and not f.archived and not unsealed:
                garbage.append(f)
        if any(f.archived for f in own) or hour_bounds_ms(day, hour)[1] + settle_ms > now_ms:
            continue
        units: dict[tuple, list[LakeFile]] = {}
        for f in own:
            if f.key in seen:
                units.setdefault(f.set_id, []).append(f)
        ordered = sorted(units.values(), key=lambda unit: unit[0].lo)
        run: list[list[LakeFile]] = []
        for unit in ordered:
            if first_unsealed is not None and unit[0].hi >= first_unsealed:
                break
            size = sum(f.size for f in unit)
            if size >= target_bytes:
                close_run(day, hour, run)
                continue
            run.append(unit)
            if sum(f.size for u in run for f in u) >= target_bytes:
                close_run(day, hour, run)
        close_run(day, hour, run)
    return CompactionPlan(tuple(tasks), tuple(garbage))
