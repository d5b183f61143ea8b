"""The shape of `readings_1m`: which of the warm store's minutes and the lake's a snapshot
holds, and whether they can share a minute. Pure logic on Arrow objects and catalog statistics.

The view must let a warm minute win over the lake's copy of the same minute (a minute
recomputed after it aged out), which costs a second scan of the warm snapshot and an anti-join.
Warm minutes and lake minutes are almost always disjoint (age-out moves a minute, then deletes
it from the warm store), and a question is usually about one of the two: the view is built for
what the snapshot holds, and the anti-join is kept for snapshots where a minute can be in both.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from enum import Enum

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tiers.catalog import FileStats
from tiers.timespan import span_may_hold

MinuteRange = tuple[int, int]  # the first and last minute (epoch ms), inclusive

_last_range: tuple[weakref.ref[pa.Table], MinuteRange | None] | None = None


def minute_range(table: pa.Table) -> MinuteRange | None:
    """The first and last `minute` of `table` (None: no rows). Kept for the last table asked
    about: the warm snapshot is one table until the next write, asked about every query."""
    global _last_range
    last = _last_range  # one read: another thread may replace it meanwhile
    if last is not None and last[0]() is table:
        return last[1]
    found: MinuteRange | None = None
    if table.num_rows:
        bounds = pc.min_max(table.column("minute"))
        lo, hi = bounds["min"], bounds["max"]
        if lo.is_valid and hi.is_valid:
            found = (int(lo.cast(pa.int64()).as_py()), int(hi.cast(pa.int64()).as_py()))
    _last_range = (weakref.ref(table), found)
    return found


def warm_may_hold(warm: pa.Table, bounds: tuple[int | None, int | None] | None) -> bool:
    """Whether the warm snapshot can hold a minute within `bounds` (analytics.bounds.minute_bounds;
    None: unbounded)."""
    found = minute_range(warm)
    if found is None:
        return False
    return bounds is None or span_may_hold(*found, *bounds)


class Shape(Enum):
    WARM = "warm"  # no lake minutes (or none given): the warm store's alone
    LAKE = "lake"  # no warm minutes: the lake's alone
    DISJOINT = "disjoint"  # both, never the same minute: a plain union
    OVERLAPPING = "overlapping"  # both, perhaps the same minute: the warm one wins


def shape(warm: pa.Table | None, lake: ds.Dataset | pa.Table | None,
          lake_bounds: Mapping[str, FileStats]) -> Shape:
    """How `readings_1m` must combine `warm` (the warm snapshot) and `lake` (the lake's
    aggregate files given to the scan, with their catalog statistics by path); None: none."""
    warm_range = minute_range(warm) if warm is not None else None
    if lake is None:
        return Shape.WARM
    if isinstance(lake, pa.Table):
        if lake.num_rows == 0:
            return Shape.WARM
        if warm_range is None:
            return Shape.LAKE
        lake_range = minute_range(lake)
        return Shape.OVERLAPPING if lake_range is None or span_may_hold(*warm_range, *lake_range) else Shape.DISJOINT
    if not isinstance(lake, ds.FileSystemDataset):  # nothing known of it
        return Shape.OVERLAPPING if warm_range is not None else Shape.LAKE
    if not lake.files:
        return Shape.WARM
    if warm_range is None:
        return Shape.LAKE
    for path in lake.files:
        stats = lake_bounds.get(path)
        if stats is None or stats.t_min_ms is None or stats.t_max_ms is None:
            return Shape.OVERLAPPING  # a file of unknown minutes may share one
        if span_may_hold(*warm_range, stats.t_min_ms, stats.t_max_ms):
            return Shape.OVERLAPPING
    return Shape.DISJOINT


_WARM = ("SELECT machine, sensor, minute::TIMESTAMP AS minute, n, \"min\", \"max\", \"avg\", \"first\", \"last\" "
         "FROM warm_1m")
# cold_agg_1m's minute is a TIMESTAMP already, so the statement's filters reach its scan.
_LAKE = "SELECT machine, sensor, minute, n, \"min\", \"max\", \"avg\", \"first\", \"last\" FROM cold_agg_1m"
# An ANTI JOIN (unlike NOT EXISTS) lets DuckDB push the statement's filters into the lake's scan.
_LAKE_NOT_WARM = ("SELECT a.machine, a.sensor, a.minute, a.n, a.\"min\", a.\"max\", a.\"avg\", a.\"first\", "
                  "a.\"last\" FROM cold_agg_1m a ANTI JOIN warm_1m w "
                  "ON w.machine = a.machine AND w.sensor = a.sensor AND w.minute::TIMESTAMP = a.minute")


def minutes_view(kind: Shape) -> str:
    """The statement that makes `readings_1m` what `kind` needs."""
    body = {Shape.WARM: _WARM, Shape.LAKE: _LAKE, Shape.DISJOINT: f"{_WARM}\n  UNION ALL {_LAKE}",
            Shape.OVERLAPPING: f"{_WARM}\n  UNION ALL {_LAKE_NOT_WARM}"}[kind]
    return "CREATE OR REPLACE VIEW readings_1m AS " + body
