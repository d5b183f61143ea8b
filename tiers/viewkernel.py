"""`tiers.viewcolumns.block_columns` as one compiled call (see that module for why). Loaded
only by `tiers.viewcolumns.warm`: importing numba costs a process seconds."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def block_columns(key_ids: np.ndarray, machine_codes: np.ndarray, sensor_codes: np.ndarray, ts: np.ndarray,
                  verified: np.ndarray, machines: np.ndarray, sensors: np.ndarray) -> tuple[int, int, int, int, int]:
    """Each row's codes into `machines` and `sensors`; the number of verified rows and the first
    and last ts of the verified rows and of the others ((0, -1) for none)."""
    fresh = 0
    fresh_first, fresh_last = np.int64(0), np.int64(-1)
    late_first, late_last = np.int64(0), np.int64(-1)
    for i in range(len(key_ids)):
        key = key_ids[i]
        machines[i] = machine_codes[key]
        sensors[i] = sensor_codes[key]
        t = ts[i]
        if verified[i]:
            if fresh == 0 or t < fresh_first:
                fresh_first = t
            if fresh == 0 or t > fresh_last:
                fresh_last = t
            fresh += 1
        else:
            late = i - fresh
            if late == 0 or t < late_first:
                late_first = t
            if late == 0 or t > late_last:
                late_last = t
    return fresh, int(fresh_first), int(fresh_last), int(late_first), int(late_last)
