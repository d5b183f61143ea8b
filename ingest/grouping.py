"""The grouping of a batch's rows by sensor (what the hot ring writes from), in one compiled
call once `warm()` has run, else with numpy.

Why compiled: at fab scale a gateway's messages rarely repeat their interleaving of sensors
(1,000 machines at 10 Hz: every one of 20,000 messages had its own), so the grouping is
computed for nearly every message. With numpy it is eight small array operations, and numpy
lets go of the interpreter lock in each: with the API's and the committer's threads waiting,
each release can cost the ingest thread a switch interval. A numba function keeps the lock
from entry to return. Compiling takes the lock for seconds, so it happens in `warm()`, beside
recovery (fabtier.runner), never on the ingest path; until then, and in processes that never
warm it (the simulator, the CLI), numpy answers the same.

Pure: arrays in, arrays out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

# (order, group_codes, counts, starts, row_group, rank); see `group_rows`.
Grouping = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_compiled: Callable[[np.ndarray, int], Grouping] | None = None
_warming = threading.Lock()


def group_rows(codes: np.ndarray, names: int) -> Grouping:
    """For a batch whose row i is sensor `codes[i]` (< `names`): `order`, the rows sorted by
    sensor (stable: each sensor's rows keep their order); the sensors present (`group_codes`,
    ascending), their row `counts` and `starts` in that order; and per sorted row its group
    (`row_group`) and its rank within it (`rank`)."""
    kernel = _compiled
    if kernel is not None:
        return kernel(codes, names)
    return _with_numpy(codes, names)


def _with_numpy(codes: np.ndarray, names: int) -> Grouping:
    # Sorted as 16-bit codes where they fit (numpy's radix sort).
    order = np.argsort(codes.astype(np.uint16) if names <= 1 << 16 else codes, kind="stable")
    per_code = np.bincount(codes)
    group_codes = np.flatnonzero(per_code).astype(np.uint32)
    counts = per_code[group_codes]
    starts = np.cumsum(counts) - counts
    row_group = np.repeat(np.arange(len(starts)), counts)
    rank = np.arange(len(codes)) - starts[row_group]
    return order, group_codes, counts, starts, row_group, rank


def warm() -> None:
    """Compile the kernel (or load it from numba's cache) and use it from now on."""
    global _compiled
    with _warming:
        if _compiled is None:
            from ingest import groupkernel  # imports numba
            groupkernel.group_rows(np.zeros(2, np.uint32), 1)
            _compiled = groupkernel.group_rows
