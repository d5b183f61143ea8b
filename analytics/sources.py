"""What a SQL session is handed: every tier's data as Arrow objects (`SqlSources`), gathered
from the lake, the unsealed log's tables, the warm store and the trails beside them.

One function for the running pipeline and for the command line reading a data directory
offline, so that both show the same views over the same parts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Set
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from alerts.acks import AckLog
from analytics.bounds import NOTHING, TsBounds
from analytics.leftout import ArchivedObject
from analytics.minutes import warm_may_hold
from analytics.session import SqlSources
from lifecycle.retrievals import JobStore
from lifecycle.runs import RunHistory
from lifecycle.warmjobs import agg_dataset
from tiers import layout
from tiers.catalog import FileStats
from tiers.cold import ColdLake
from tiers.parquetformat import hour_bounds_ms
from tiers.timespan import span_may_hold
from tiers.unsealed import SegmentTables
from tiers.warm import WarmStore

# A range of more days than this is listed whole: one listing per day would cost more.
MAX_LISTED_DAYS = 31
_DAY_MS = 86_400_000


def raw_files(lake: ColdLake, ts_bounds: TsBounds | None = None) -> list[layout.LakeFile]:
    """The lake's raw files whose hours `ts_bounds` ([lo, hi] epoch ms, analytics.bounds) can
    touch, all of them without bounds. With the lake's catalog (tiers.catalog), only the
    manifests of the days in the bounds are read, bounded on one side or both; without it,
    bounded on both sides to at most `MAX_LISTED_DAYS` days, only those days' prefixes are
    listed, else the lake is listed and the hours outside the bounds dropped. Whole hour
    partitions are kept or dropped, so that which files of an hour a reader reads
    (layout.visible: compacted sets) does not change."""
    if ts_bounds is None or ts_bounds == (None, None):
        return lake.lake_files("raw")
    lo, hi = ts_bounds
    if lo is not None and hi is not None and hi < lo:
        return []  # no reading can match: nothing to list
    days = _catalog_days(lake, lo, hi)
    if days is None and lo is not None and hi is not None and hi // _DAY_MS - lo // _DAY_MS < MAX_LISTED_DAYS:
        days = _day_names(range(lo // _DAY_MS, hi // _DAY_MS + 1))
    if days is not None:
        files = [f for d in days for f in lake.lake_files("raw", f"raw/date={d}/")]
    else:
        files = lake.lake_files("raw")
    return [f for f in files if _touches(f, lo, hi)]


def _day_names(day_numbers) -> list[str] | None:
    try:
        days = [dt.datetime.fromtimestamp(day * _DAY_MS / 1000, dt.UTC).strftime("%Y-%m-%d") for day in day_numbers]
    except (ValueError, OverflowError, OSError):
        return None  # beyond what a date names: list it all
    return days if all(len(d) == 10 for d in days) else None


def _catalog_days(lake: ColdLake, lo: int | None, hi: int | None) -> list[str] | None:
    """The days of the catalog within [lo, hi] (None: the store keeps no catalog)."""
    days_of = getattr(lake.store, "days", None)
    known = days_of("raw") if days_of is not None else None
    if known is None:
        return None
    first = _day_names([lo // _DAY_MS]) if lo is not None else None
    last = _day_names([hi // _DAY_MS]) if hi is not None else None
    return [d for d in known if (first is None or d >= first[0]) and (last is None or d <= last[0])]


def _may_hold(f: layout.LakeFile, ts_bounds: TsBounds | None) -> bool:
    return _stats_may_hold(f.stats, ts_bounds)


def _stats_may_hold(stats: FileStats | None, bounds: TsBounds | None) -> bool:
    """Whether a file whose time range is `stats`'s can hold a row within `bounds` (unknown: yes)."""
    if bounds is None or stats is None or stats.t_min_ms is None or stats.t_max_ms is None:
        return True
    return span_may_hold(stats.t_min_ms, stats.t_max_ms, *bounds)


def raw_to_read(visible: list[layout.LakeFile], ts_bounds: TsBounds | None) -> list[layout.LakeFile]:
    """The visible files whose time range (the catalog's statistics) can hold a reading within
    `ts_bounds`: no reader opens the others. Which files are visible is decided first, on
    whole hours, so that dropping one here never uncovers another."""
    return [f for f in visible if _may_hold(f, ts_bounds)]


def _touches(f: layout.LakeFile, lo: int | None, hi: int | None) -> bool:
    if f.hour is None:
        return True  # no hour to judge it by: read it
    start, end = hour_bounds_ms(f.day, f.hour)
    return (lo is None or end > lo) and (hi is None or start <= hi)


def tier_sources(*, lake: ColdLake, hidden: Set[int], unsealed: SegmentTables, audit: pa.Table,
                 warm: WarmStore | None, data_dir: Path, recipe_limits: pa.Table,
                 ts_bounds: TsBounds | None = None, minute_bounds: TsBounds | None = None) -> SqlSources:
    """`hidden`: log segments whose rows come from `unsealed`, so their lake files (written by
    a seal that has not deleted the segment yet) stay out and no reading shows twice.
    `ts_bounds` (analytics.bounds.ts_bounds of the statement): the only readings the statement
    can see, so only the lake's days (and archived objects) in that range are listed;
    `minute_bounds` (analytics.bounds.minute_bounds): the same for the lake's minutes."""
    cold_agg_1m, cold_agg_1m_bounds = agg_sources(lake, minute_bounds)
    raw = raw_files(lake, ts_bounds)  # listed once: what is read, and what is left out
    visible = raw_to_read(layout.visible(raw, writer=lake.writer_id, hidden_segments=set(hidden)), ts_bounds)
    return SqlSources(
        cold_raw=lake.raw_datasets(hidden, files=visible),
        cold_raw_bounds=raw_bounds(lake, visible),
        lake_dir=lake.local_root(),
        cold_quarantine=lake.dataset("quarantine", hidden),
        cold_context=lake.dataset("context", hidden),
        hot_fresh=unsealed.fresh,
        hot_late=unsealed.late,
        hot_quarantine=unsealed.quarantine,
        hot_context=unsealed.context,
        audit=audit,
        cold_alerts=lake.dataset("alerts", hidden),
        hot_alerts=unsealed.alerts,
        recipe_limits=recipe_limits,
        acks=AckLog.of(data_dir).table(),
        warm_1m=_warm_minutes(warm, minute_bounds),
        cold_agg_1m=cold_agg_1m,
        cold_agg_1m_bounds=cold_agg_1m_bounds,
        job_history=RunHistory(data_dir / "lifecycle").table(),
        archived_raw=with_jobs(archived_raw(raw, writer=lake.writer_id, hidden=hidden, ts_bounds=ts_bounds),
                               data_dir),
    )


def _warm_minutes(warm: WarmStore | None, minute_bounds: TsBounds | None) -> pa.Table | None:
    """The warm store's snapshot, unless no minute of it can be within `minute_bounds` (then
    None: `readings_1m` is built without it, analytics.minutes)."""
    if warm is None or minute_bounds == NOTHING:
        return None
    snapshot = warm.snapshot()
    return snapshot if warm_may_hold(snapshot, minute_bounds) else None


def agg_sources(lake: ColdLake, minute_bounds: TsBounds | None = None) -> tuple[ds.Dataset | None, dict[str, FileStats]]:
    """The lake's aggregate files whose minutes (the catalog's statistics) can match
    `minute_bounds`, as a dataset, and their statistics by path; without a catalog, every
    file and no statistics; None for a statement that reads no minutes (the session's
    `cold_agg_1m` is then empty)."""
    if minute_bounds == NOTHING:  # the statement reads no minutes: nothing is listed
        return None, {}
    listing = getattr(lake.store, "objects_with_stats", None)
    if listing is None:
        return agg_dataset(lake.store), {}
    kept = [(info.key, stats) for info, stats in listing("agg_1m/")
            if info.key.endswith(".parquet") and _stats_may_hold(stats, minute_bounds)]
    return (agg_dataset(lake.store, [key for key, _ in kept]),
            {lake.path(key): stats for key, stats in kept if stats is not None})


def raw_bounds(lake: ColdLake, files: list[layout.LakeFile]) -> dict[str, FileStats]:
    """The catalog's statistics of `files`, by their paths in the lake's datasets."""
    return {lake.path(f.key): f.stats for f in files if f.stats is not None}


def with_jobs(archived: list[ArchivedObject], data_dir: Path) -> list[ArchivedObject]:
    """`archived` with the open retrieval job that brings each back, if one does (the jobs
    are read only when something is left out)."""
    if not archived:
        return archived
    open_jobs = {obj.key: job.id for job in JobStore(data_dir).jobs() if not job.state.final
                 for obj in job.objects}
    return [dataclasses.replace(o, job=open_jobs.get(o.key)) for o in archived]


def archived_raw(files: list[layout.LakeFile], *, writer: str, hidden: Set[int],
                 ts_bounds: TsBounds | None = None) -> list[ArchivedObject]:
    """The archived raw files a reader would read if they were not archived (not those whose
    readings a compacted set holds too, nor this writer's files of unsealed segments), and
    whose time range (the catalog's statistics, kept from before they were archived) can
    hold a reading within `ts_bounds`: one that cannot is not left out of the answer."""
    archived = [f for f in files if not f.readable and f.hour is not None  # restored copies are read
                and _may_hold(f, ts_bounds)]
    if not archived:
        return []
    would_read = {f.key for f in layout.visible([dataclasses.replace(f, restored=True) for f in files],
                                                writer=writer, hidden_segments=set(hidden))}
    return [ArchivedObject(f.key, f.size, f.storage_class, *hour_bounds_ms(f.day, f.hour))
            for f in archived if f.key in would_read and f.hour is not None]
