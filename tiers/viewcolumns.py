"""What SQL's view needs of a block of unsealed rows, in one compiled call once `warm()` has
run, else with numpy: each row's machine and sensor code (gathered by key id), how many rows
are verified, and the ts span of the verified rows and of the others.

Why compiled: with numpy these are six calls over the block (two gathers, two flag tests, a
minimum and a maximum), and numpy lets go of the interpreter lock in each of them over 128 k
rows. A statement builds its view beside an ingest thread that holds the lock nearly all the
time, so each release cost it a switch interval or more: in process, a block took 1.1 ms alone
and 2-11 ms (p50-p90) beside a thread that kept the lock busy. A numba function keeps the lock
from entry to return (as `tiers.hotkernel`).

Pure: arrays in, arrays and numbers out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

# (machine codes, sensor codes, verified rows, (first, last) ts of the verified rows, of the
# others); a span of no rows is (0, -1), which no bounds match.
BlockColumns = tuple[np.ndarray, np.ndarray, int, tuple[int, int], tuple[int, int]]
Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  tuple[int, int, int, int, int]]

_compiled: Kernel | None = None
_warming = threading.Lock()


def block_columns(key_ids: np.ndarray, machine_codes: np.ndarray, sensor_codes: np.ndarray, ts: np.ndarray,
                  verified: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None) -> BlockColumns:
    """`out`: two int32 arrays as long as the block to write the machine and sensor codes into
    (memory the caller has ready); None: new ones."""
    machines, sensors = out if out is not None else (np.empty(len(key_ids), np.int32), np.empty(len(key_ids), np.int32))
    kernel = _compiled
    if kernel is not None:
        fresh, fresh_first, fresh_last, late_first, late_last = kernel(
            key_ids, machine_codes, sensor_codes, ts, verified, machines, sensors)
        return machines, sensors, fresh, (fresh_first, fresh_last), (late_first, late_last)
    return _with_numpy(key_ids, machine_codes, sensor_codes, ts, verified, machines, sensors)


def _span(ts: np.ndarray) -> tuple[int, int]:
    return (int(ts.min()), int(ts.max())) if len(ts) else (0, -1)


def _with_numpy(key_ids: np.ndarray, machine_codes: np.ndarray, sensor_codes: np.ndarray, ts: np.ndarray,
                verified: np.ndarray, machines: np.ndarray, sensors: np.ndarray) -> BlockColumns:
    fresh = int(np.count_nonzero(verified))
    if fresh == len(ts):
        spans = _span(ts), (0, -1)
    elif fresh == 0:
        spans = (0, -1), _span(ts)
    else:
        spans = _span(ts[verified]), _span(ts[~verified])
    machines[:] = np.take(machine_codes, key_ids)
    sensors[:] = np.take(sensor_codes, key_ids)
    return machines, sensors, fresh, *spans


def warm() -> None:
    """Compile the kernel (or load it from numba's cache) and use it from now on."""
    global _compiled
    with _warming:
        if _compiled is None:
            from tiers import viewkernel  # imports numba
            one = np.zeros(1, np.int32)
            viewkernel.block_columns(one, one, one, np.zeros(1, np.int64), np.ones(1, np.bool_),
                                     np.empty(1, np.int32), np.empty(1, np.int32))
            _compiled = viewkernel.block_columns
