"""The warm tier's two jobs, as I/O around the pure rollup logic: `rollup` and `age_out`.

rollup: reads the audit trail from where it stopped, takes every raw file that a tier move
wrote since (sealing, or a later compaction), finds the (machine, sensor, minute) keys those
files touch, recomputes those minutes from *all* raw data of those minutes in the lake, and
upserts them into the warm store together with the new audit position (one transaction).
A crash anywhere means the same files are taken again: the job is idempotent.
A minute is never replaced by one computed from part of its data: when a raw file that may
hold readings of it (any file of its hour a reader would need) is archived, and so cannot be
read, the minute is left as it was, counted (`skipped_archived`) and logged at WARNING.

age_out: minutes older than `[warm] retention` are merged into one Parquet file per UTC day
and writer (`agg_1m/date=D/{writer}.parquet`, replaced atomically, so the lake never holds a
minute twice), read back and compared, recorded in the audit trail, and only then removed
from the warm store (and only where the warm row is still the one that was copied).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from core.protocols import ObjectStore
from lifecycle import rollup as ru
from lifecycle.audit import AuditLog
from tiers import layout
from tiers import parquetformat as fmt
from tiers.cold import LEAN_SCAN, ColdLake, Move
from tiers.layout import LakeFile
from tiers.unsealed import READINGS_SCHEMA
from tiers.warm import MINUTES_SCHEMA, WarmStore

log = logging.getLogger("fabtier.lifecycle")

AUDIT_OFFSET = "rollup.audit_offset"
FILES_PER_STEP = 256  # raw files per warm transaction: bounds the work lost to a crash on a first run over a big lake
# Raw readings read at once to recompute minutes whose runs overlap (~45 B each as Arrow rows,
# about three times that while sorted and grouped): bounds that path's memory.
READ_READINGS = 1 << 20


class AggVerifyError(Exception):
    """An agg_1m file did not read back as written; the warm rows are kept."""


@dataclass(frozen=True)
class RollupReport:
    files: int
    minutes: int
    skipped_archived: int = 0  # minutes left as they were: raw files of their hours are archived
    archived_files: int = 0  # those archived files (and new ones already archived, unread)


@dataclass(frozen=True)
class AgeOutReport:
    minutes: int
    files: int
    kept: int  # minutes recomputed while they were being copied: they stay warm for the next run


# ---- reading the audit trail --------------------------------------------------------
def _raw_targets(audit_path: Path, offset: int, store_url: str) -> list[tuple[str, int]]:
    """(object key, end offset of its audit line) of every raw file written after `offset`."""
    if not audit_path.exists():
        return []
    with open(audit_path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n")
    if end < 0:
        return []
    found, position, prefix = [], offset, store_url.rstrip("/") + "/"
    for line in data[:end + 1].split(b"\n")[:-1]:
        position += len(line) + 1
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line torn by a crash: its move was redone and recorded again
        target = record.get("target", "")
        if record.get("what") == "raw" and target.startswith(prefix):
            found.append((target[len(prefix):], position))
        else:
            found.append(("", position))  # keeps the position moving past other records
    return found


def _dataset(store: ObjectStore, keys: list[str], schema: pa.Schema) -> ds.Dataset:
    filesystem, root = store.arrow_filesystem()
    return ds.dataset([f"{root}/{k}" for k in keys], filesystem=filesystem, format="parquet", schema=schema)


class _Hours:
    """The raw files of the lake's hours, listed once per rollup step."""

    def __init__(self, store: ObjectStore) -> None:
        self._lake = ColdLake(store, writer_id="")
        self._listed: dict[str, list[LakeFile]] = {}

    def files(self, prefix: str) -> list[LakeFile]:
        if prefix not in self._listed:
            self._listed[prefix] = self._lake.lake_files("raw", prefix)
        return self._listed[prefix]

    def visible(self, prefix: str) -> list[LakeFile]:
        """The files a reader reads (not those a compacted set replaced, nor archived ones);
        files of segments still in the log count too, as they hold what sealing will keep."""
        return layout.visible(self.files(prefix), writer="", hidden_segments=set())

    def archived_needed(self, prefix: str) -> list[LakeFile]:
        """Archived files that a reader would need if they were readable: the hour's readings
        are not all readable while there is one."""
        files = self.files(prefix)
        if not any(f.archived for f in files):
            return []
        needed = {f.key for f in layout.visible([replace(f, archived=False) for f in files], writer="",
                                                hidden_segments=set())}
        return [f for f in files if f.archived and f.key in needed]


def _minutes_to_recompute(store: ObjectStore, keys: list[str], hours: _Hours) -> tuple[pa.Table, set[str]]:
    """The minutes the raw files `keys` touch, with how many of their readings each holds, and
    those of `keys` that are archived (their minutes cannot be known without reading them)."""
    present, archived = [], set()
    for key in keys:
        found = next((f for f in hours.files(key.rsplit("/", 1)[0] + "/") if f.key == key), None)
        if found is None:
            continue  # compacted away since: its rows moved on
        if found.archived:
            archived.add(key)
        else:
            present.append(key)
    if not present:
        return ru.merge_counts([]), archived
    # Batch by batch: a minute's worth of seals at full rate is tens of millions of readings.
    batches = _dataset(store, present, READINGS_SCHEMA).to_batches(
        columns=["machine", "sensor", "ts"], **LEAN_SCAN)
    return ru.merge_counts([ru.touched_counts(pa.Table.from_batches([b])) for b in batches]), archived


def _hour_of(minutes: pa.Table) -> pa.Array:
    return pc.divide(minutes.column("minute").cast(pa.int64()), pa.scalar(3_600_000, pa.int64()))


def _without_archived_hours(touched: pa.Table, hours: _Hours) -> tuple[pa.Table, int, set[str]]:
    """`touched` minus the minutes of hours with archived raw files a reader would need; how
    many minutes were left out, and those files."""
    blocked: list[int] = []
    archived: set[str] = set()
    for day, hour, start_ms, _ in ru.hours_of(touched):
        files = hours.archived_needed(layout.hour_prefix(day, hour))
        if files:
            blocked.append(start_ms // 3_600_000)
            archived.update(f.key for f in files)
    if not blocked:
        return touched, 0, archived
    keep = pc.invert(pc.is_in(_hour_of(touched), pa.array(blocked, pa.int64())))
    kept = touched.filter(keep)
    return kept, touched.num_rows - kept.num_rows, archived


def _recompute(store: ObjectStore, touched: pa.Table, hours: _Hours) -> pa.Table:
    """The aggregates of the touched minutes from every raw reading of them in the lake.

    Each file of their hours is read once, a batch at a time, into partial aggregates
    (`rollup.partial_minutes`), merged per minute (`rollup.merge_partials`): memory holds a
    few batches and the partials, whatever the rate, and nothing is sorted but the partials.
    A minute whose runs overlap in time (late readings, two writers: it may hold a reading
    twice) is computed from its raw rows instead, deduplicated (`_from_rows`)."""
    results = []
    lake = ColdLake(store, writer_id="")
    for day, hour, start_ms, end_ms in ru.hours_of(touched):
        files = hours.visible(layout.hour_prefix(day, hour))
        if not files:
            continue
        in_hour = _in_range(touched, start_ms, end_ms)
        wanted = _minutes_filter(in_hour, machines=pc.unique(in_hour.column("machine")))
        merged, overlapping = ru.merge_partials([ru.partial_minutes(batch) for f in files
                                                 for batch in lake.raw_batches(f, wanted)])
        results.append(ru.only_keys(merged, in_hour))
        overlapping = overlapping.join(in_hour.select(ru.KEY), keys=ru.KEY, join_type="left semi")
        if overlapping.num_rows:
            results.append(_from_rows(lake, files, overlapping))
    return ru.sort_minutes(pa.concat_tables(results)) if results else MINUTES_SCHEMA.empty_table()


def _in_range(touched: pa.Table, start_ms: int, end_ms: int) -> pa.Table:
    minute_ms = touched.column("minute").cast(pa.int64())
    return touched.filter(pc.and_(pc.greater_equal(minute_ms, start_ms), pc.less(minute_ms, end_ms)))


def _minutes_filter(keys: pa.Table, machines: pa.Array, sensors: pa.Array | None = None) -> ds.Expression:
    """Readings of the span of `keys`' minutes, of these machines (and sensors)."""
    first = pc.min(keys.column("minute"))
    last = pa.scalar(pc.max(keys.column("minute")).cast(pa.int64()).as_py() + ru.MINUTE_MS,
                     pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    wanted = (ds.field("ts") >= first) & (ds.field("ts") < last) & ds.field("machine").isin(machines)
    return wanted if sensors is None else wanted & ds.field("sensor").isin(sensors)


def _from_rows(lake: ColdLake, files: list[LakeFile], keys: pa.Table) -> pa.Table:
    """The minutes of `keys` (with `n`) from their raw rows, deduplicated as the lake's rule
    says, read part by part (`READ_READINGS` readings or so at a time, `rollup.read_chunks`)."""
    results = []
    for part in ru.read_chunks(keys, READ_READINGS):
        # Values converted exactly (decimal files: tiers.parquetformat).
        raw = lake.read_raw(files=files, lean=True, filter=_minutes_filter(
            part, machines=pc.unique(part.column("machine")), sensors=pc.unique(part.column("sensor"))))
        results.append(ru.only_keys(ru.aggregate_minutes(raw), part))
        del raw
    return pa.concat_tables(results) if results else MINUTES_SCHEMA.empty_table()


def rollup(*, store: ObjectStore, warm: WarmStore, audit: AuditLog) -> RollupReport:
    """Recompute every minute touched by raw files written since the last run, except those
    whose hour has archived raw files (they stay as they were)."""
    offset = warm.state(AUDIT_OFFSET) or 0
    size = audit.path.stat().st_size if audit.path.exists() else 0
    if offset > size:
        log.warning("the audit trail is shorter than the rollup's position; recomputing from its start")
        offset = 0
    targets = _raw_targets(audit.path, offset, store.url)
    files = minutes = skipped = 0
    archived: set[str] = set()
    unread_total: set[str] = set()
    for start in range(0, len(targets), FILES_PER_STEP):
        step = targets[start:start + FILES_PER_STEP]
        keys = sorted({k for k, _ in step if k})
        end_offset = step[-1][1]
        hours = _Hours(store)  # listed afresh each step: a step is one warm transaction
        touched, unread = _minutes_to_recompute(store, keys, hours)
        touched, left_out, blocking = _without_archived_hours(touched, hours)
        computed = _recompute(store, touched, hours)
        # Not a tier move (nothing is copied away or deleted): its runs are in `job_runs`.
        warm.upsert(computed, state={AUDIT_OFFSET: end_offset})
        files += len(keys)
        minutes += computed.num_rows
        skipped += left_out
        archived |= blocking
        unread_total |= unread
    if skipped:
        log.warning("rollup: %d minute(s) kept as they were, not recomputed: %d archived raw file(s) may hold "
                    "some of their readings, and a minute is never replaced by one computed from part of its data",
                    skipped, len(archived))
    if unread_total:
        log.warning("rollup: %d raw file(s) were archived before they were rolled up; the minutes they touch "
                    "stay as they were", len(unread_total))
    return RollupReport(files=files, minutes=minutes, skipped_archived=skipped,
                        archived_files=len(archived | unread_total))


# ---- age-out ------------------------------------------------------------------------
def agg_key(day: str, writer_id: str) -> str:
    return f"agg_1m/date={day}/{writer_id}.parquet"


def agg_dataset(store: ObjectStore, keys: list[str] | None = None) -> ds.Dataset:
    """Every aged-out minute in the lake (or in the aggregate files `keys`), for the SQL session."""
    if keys is None:
        keys = [k for k, _ in store.list("agg_1m/") if k.endswith(".parquet")]
    return _dataset(store, keys, MINUTES_SCHEMA)


def _write_verified(store: ObjectStore, key: str, merged: pa.Table, moved: pa.Table, source: str) -> Move:
    data = fmt.to_parquet_bytes(merged)
    store.put(key, data)
    back = fmt.from_parquet_bytes(store.get(key)).select(MINUTES_SCHEMA.names).cast(MINUTES_SCHEMA)
    if back.num_rows != merged.num_rows or fmt.checksum(back) != fmt.checksum(merged):
        raise AggVerifyError(f"{key} read back {back.num_rows} rows, wrote {merged.num_rows}")
    if fmt.checksum(ru.only_keys(back, moved)) != fmt.checksum(moved):
        raise AggVerifyError(f"{key} does not hold the minutes moved into it")
    return Move(what="agg_1m", source=source, target=f"{store.url}/{key}", rows=moved.num_rows,
                bytes=len(data), checksum=fmt.checksum(moved))


def age_out(*, store: ObjectStore, warm: WarmStore, audit: AuditLog, writer_id: str,
            cutoff_ms: int, at_ms: int) -> AgeOutReport:
    """Move every warm minute that ended at or before `cutoff_ms` into the lake's agg_1m/."""
    old = warm.minutes_before(cutoff_ms)
    if old.num_rows == 0:
        return AgeOutReport(0, 0, 0)
    moved = files = kept = 0
    for day, part in sorted(fmt.split_by_day(old, "minute").items()):
        part = ru.sort_minutes(part)
        key = agg_key(day, writer_id)
        existing = (fmt.from_parquet_bytes(store.get(key)) if store.exists(key)
                    else MINUTES_SCHEMA.empty_table())
        merged = ru.merge_minutes(existing, part)
        move = _write_verified(store, key, merged, part, source=f"{warm.path.as_uri()}#readings_1m")
        audit.record("age_out", [move], at_ms)
        deleted = warm.delete_unchanged(part)
        moved += deleted
        kept += part.num_rows - deleted
        files += 1
    return AgeOutReport(minutes=moved, files=files, kept=kept)
