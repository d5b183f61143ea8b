"""What a SQL session is handed: every tier's data as Arrow objects (`SqlSources`), gathered
from the lake, the unsealed log's tables, the warm store and the trails beside them.

One function for the running pipeline and for the command line reading a data directory
offline, so that both show the same views over the same parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Set
from pathlib import Path

import pyarrow as pa

from analytics.leftout import ArchivedObject
from analytics.session import SqlSources
from lifecycle.runs import RunHistory
from lifecycle.warmjobs import agg_dataset
from tiers import layout
from tiers.cold import ColdLake
from tiers.parquetformat import hour_bounds_ms
from tiers.unsealed import SegmentTables
from tiers.warm import WarmStore


def tier_sources(*, lake: ColdLake, hidden: Set[int], unsealed: SegmentTables, audit: pa.Table,
                 warm: WarmStore | None, data_dir: Path, recipe_limits: pa.Table) -> SqlSources:
    """`hidden`: log segments whose rows come from `unsealed`, so their lake files (written by
    a seal that has not deleted the segment yet) stay out and no reading shows twice."""
    raw = lake.lake_files("raw")  # listed once: what is read, and what is left out
    return SqlSources(
        cold_raw=lake.raw_datasets(hidden, files=layout.visible(raw, writer=lake.writer_id,
                                                                  hidden_segments=set(hidden))),
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
        warm_1m=warm.snapshot() if warm is not None else None,
        cold_agg_1m=agg_dataset(lake.store),
        job_history=RunHistory(data_dir / "lifecycle").table(),
        archived_raw=archived_raw(raw, writer=lake.writer_id, hidden=hidden),
    )


def archived_raw(files: list[layout.LakeFile], *, writer: str, hidden: Set[int]) -> list[ArchivedObject]:
    """The archived raw files a reader would read if they were not archived (not those whose
    readings a compacted set holds too, nor this writer's files of unsealed segments)."""
    archived = [f for f in files if not f.readable and f.hour is not None]  # restored copies are read
    if not archived:
        return []
    would_read = {f.key for f in layout.visible([dataclasses.replace(f, restored=True) for f in files],
                                                writer=writer, hidden_segments=set(hidden))}
    return [ArchivedObject(f.key, f.size, f.storage_class, *hour_bounds_ms(f.day, f.hour))
            for f in archived if f.key in would_read and f.hour is not None]
