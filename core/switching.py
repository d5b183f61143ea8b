"""How often the interpreter lock changes hands, beside an ingest thread that keeps it busy.

A thread that wants the interpreter lock waits one switch interval before it asks the holder
to let go. The ingest thread holds the lock nearly all the time, so every time another thread
gives the lock up (each DuckDB call, each file-system call, each pyarrow call that releases it)
it pays up to a switch interval to get it back. A SQL statement gives it up some 40-50 times
(its snapshot, binding the session, DuckDB's planning and execution, the answer's encoding):
at the process's 0.5 ms that was ~25 ms of a `count(*)` that computes for ~9 ms.

`quick_handoffs()` shortens the interval while such a request runs. It does not add handoffs
(the ingest thread is asked to let go just as often, only sooner), so the ingest thread loses
what it lost before: the other thread's own time with the lock.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The process's interval while it ingests (Python's default is 5 ms): the API's threads
# (dashboards, /series) then answer within a millisecond or so.
INGEST_SWITCH_INTERVAL = 0.0005
# While a request that hands the lock back and forth dozens of times runs.
QUICK_SWITCH_INTERVAL = 0.00005

_lock = threading.Lock()
_holders = 0
_restore = INGEST_SWITCH_INTERVAL


@contextmanager
def quick_handoffs() -> Iterator[None]:
    """The switch interval at QUICK_SWITCH_INTERVAL while any caller is inside, then back to
    what it was before the first one came in."""
    global _holders, _restore
    with _lock:
        if _holders == 0:
            _restore = sys.getswitchinterval()
            sys.setswitchinterval(min(_restore, QUICK_SWITCH_INTERVAL))
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                sys.setswitchinterval(_restore)
