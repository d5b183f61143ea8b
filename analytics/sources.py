"""What a SQL session is handed: every tier's data as Arrow objects (`SqlSources`), gathered
from the lake, the unsealed log's tables, the warm store and the trails beside them.

One function for the running pipeline and for the command line reading a data directory
offline, so that both show the same views over the same parts.
"""

from __future__ import annotations

from collections.abc import Set
from pathlib import Path

import pyarrow as pa

from analytics.session import SqlSources
from lifecycle.runs import RunHistory
from lifecycle.warmjobs import agg_dataset
from tiers.cold import ColdLake
from tiers.unsealed import SegmentTables
from tiers.warm import WarmStore


def tier_sources(*, lake: ColdLake, hidden: Set[int], unsealed: SegmentTables, audit: pa.Table,
                 warm: WarmStore | None, data_dir: Path, recipe_limits: pa.Table) -> SqlSources:
    """`hidden`: log segments whose rows come from `unsealed`, so their lake files (written by
    a seal that has not deleted the segment yet) stay out and no reading shows twice."""
    return SqlSources(
        cold_raw=lake.raw_datasets(hidden),
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
    )
