"""Whether rows whose times run from `first` to `last` can hold one within a statement's time
bounds: the one test by which the lake's files (their statistics), the unsealed log's batches
(their spans) and the warm store's minutes (analytics.minutes) are left out of a snapshot, or
found to overlap. Pure."""

from __future__ import annotations


def span_may_hold(first: int, last: int, lo: int | None, hi: int | None) -> bool:
    """Whether `[first, last]` meets `[lo, hi]` (None: open at that end). An empty range
    (lo > hi, analytics.bounds.NOTHING) meets nothing, whatever the span."""
    if lo is not None and hi is not None and lo > hi:
        return False
    return (lo is None or last >= lo) and (hi is None or first <= hi)
