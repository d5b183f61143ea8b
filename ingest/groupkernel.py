"""`ingest.grouping.group_rows` as one compiled call (see that module for why). Loaded only by
`ingest.grouping.warm`: importing numba costs a process seconds."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def group_rows(codes: np.ndarray, names: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                        np.ndarray, np.ndarray]:
    """A counting sort of the rows by code: the same arrays, of the same types, as
    `ingest.grouping._with_numpy`."""
    n = len(codes)
    per_code = np.zeros(names, np.int64)
    for i in range(n):
        per_code[codes[i]] += 1
    groups = 0
    for c in range(names):
        if per_code[c] > 0:
            groups += 1
    group_codes = np.empty(groups, np.uint32)
    counts = np.empty(groups, np.int64)
    starts = np.empty(groups, np.int64)
    next_row = np.empty(names, np.int64)  # where a code's next row goes in sorted order
    row_group = np.empty(n, np.int64)
    rank = np.empty(n, np.int64)
    g = 0
    at = 0
    for c in range(names):
        if per_code[c] > 0:
            group_codes[g] = c
            counts[g] = per_code[c]
            starts[g] = at
            next_row[c] = at
            for j in range(per_code[c]):
                row_group[at + j] = g
                rank[at + j] = j
            at += per_code[c]
            g += 1
    order = np.empty(n, np.int64)
    for i in range(n):
        c = codes[i]
        order[next_row[c]] = i
        next_row[c] += 1
    return order, group_codes, counts, starts, row_group, rank
