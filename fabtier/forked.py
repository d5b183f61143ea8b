"""Run a function in a forked child process and take back what it returns.

Why: sealing a segment of ten million readings is seconds of numpy and Arrow work. In a
thread of the ingest process it competes for the interpreter lock with the ingest thread,
which then takes a backlog of several hundred milliseconds, and alerts wait behind it. A
forked child sees the closed segment as it is in memory (copy-on-write: nothing is copied
or serialised) and runs on the other core with its own interpreter lock.

Fork is safe here because the child only computes and writes files: the forking thread
holds the interpreter lock, so Python objects are consistent; the child does not log, does
not take the parent's locks, builds its own network clients (`after_fork`), dies with its
parent (PR_SET_PDEATHSIG), and leaves with os._exit, running no cleanup of the parent's.

A child that hangs is found by its progress, not only by the overall timeout: while it
works, its CPU time or the bytes it reads and writes (files and sockets alike) grow. The
parent reads them from /proc (Linux) and kills a child in which none of them moved for
`stall` seconds: stopped (SIGSTOP), deadlocked, or waiting on a connection that carries
nothing. Elsewhere only the timeout applies.

A child may run at idle CPU priority (`idle_unless`): only on a core nothing else wants, so
that on a busy machine the work waits rather than what the parent serves. But work that is
needed soon must not starve behind unrelated processes: once `idle_unless()` turns true the
parent raises the child to normal priority, or, where the system refuses that (raising a
priority needs CAP_SYS_NICE or an RLIMIT_NICE allowance), kills it and runs `fn` again in a
child at normal priority.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1

# s; a child that shows no progress this long is killed. At full ingest rate `[ingest]
# max_unsealed` fills in minutes, so a stalled seal must be replaced well before then; a
# child that is working moves its counters many times a second. Read at each call (tests
# lower it).
STALL_LIMIT = 60.0
IDLE_NICENESS = 10  # where SCHED_IDLE does not exist


class ChildFailed(Exception):
    """The function raised in the child; the message carries its traceback."""


class ChildLost(Exception):
    """The child died or hung without an answer (nothing is known of what it did)."""


class ChildStalled(ChildLost):
    """The child made no progress (CPU time, bytes read or written) for the stall limit and
    was killed."""


def available() -> bool:
    return hasattr(os, "fork")


def call_in_fork(fn: Callable[[], T], *, timeout: float, stall: float | None = None,
                 idle_unless: Callable[[], bool] | None = None) -> T:
    """`fn()` in a forked child; ChildFailed if it raised, ChildLost if the child died, gave
    no answer within `timeout` or (ChildStalled) made no progress for `stall` seconds
    (default STALL_LIMIT); a child given up is killed. With `idle_unless`, the child runs at
    idle CPU priority until `idle_unless()` is true (checked before the fork and while
    waiting), then at normal priority (see the module's docstring)."""
    stall = STALL_LIMIT if stall is None else stall
    idle = idle_unless is not None and not idle_unless()
    try:
        return _call_once(fn, timeout, stall, idle_unless if idle else None)
    except _Replaced:
        return _call_once(fn, timeout, stall, None)


_FORKING = threading.Lock()


class _Replaced(Exception):
    """The idle child was killed because it could not be raised to normal priority."""


def _call_once(fn: Callable[[], T], timeout: float, stall: float, idle_unless: Callable[[], bool] | None) -> T:
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    # The child must not finalise the parent's garbage: a collection in the child would run
    # destructors of objects it only has a copy of (a DuckDB connection among them crashed
    # the child). No collection runs across the fork, and the child freezes everything it
    # inherited (frozen objects are never collected) before anything else. The parent's own
    # frozen objects (`freeze_startup_objects`) stay frozen: a freeze and unfreeze here would
    # hand them back to its collections.
    with _FORKING:  # one fork at a time: another's `gc.enable` would come in between
        collecting = gc.isenabled()
        gc.disable()
        try:
            pid = os.fork()
        except OSError as exc:  # ENOMEM, EAGAIN (a process limit): the caller does it itself
            os.close(read_fd)
            os.close(write_fd)
            raise ChildLost(f"cannot fork: {exc}") from None
        finally:
            if collecting and os.getpid() == parent:
                gc.enable()
    if pid == 0:
        _child(fn, read_fd, write_fd, parent, idle=idle_unless is not None)  # never returns
    os.close(write_fd)
    try:
        payload = _read_all(read_fd, timeout, _Progress(pid, stall), _Priority(pid, idle_unless))
    except (ChildLost, _Replaced):
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    if not payload:
        raise ChildLost("the child process ended without an answer")
    try:
        ok, result = pickle.loads(payload)
    except Exception as exc:  # cut short: the child died while writing its answer
        raise ChildLost(f"the child's answer is incomplete ({type(exc).__name__})") from None
    if not ok:
        raise ChildFailed(result)
    return result


class _Progress:
    """Whether a child still moves: its CPU time and the bytes it read and wrote, from /proc."""

    def __init__(self, pid: int, stall: float) -> None:
        self.stall = stall
        self._stat, self._io = f"/proc/{pid}/stat", f"/proc/{pid}/io"
        self._last = self._sample()
        self._since = time.monotonic()
        # Often enough that a stall is seen soon after the limit, rarely enough to cost nothing.
        self.interval = min(1.0, max(0.01, stall / 5))

    def _sample(self) -> tuple[int, ...] | None:
        try:
            with open(self._stat, "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
            counters = [int(fields[11]), int(fields[12])]  # utime, stime (proc(5): fields 14, 15)
        except (OSError, IndexError, ValueError):
            return None  # no /proc (not Linux), or the child is gone: the pipe says what happened
        try:
            with open(self._io, "rb") as io:
                counters += [int(line.split()[1]) for line in io.read().splitlines()[:2]]  # rchar, wchar
        except (OSError, IndexError, ValueError):
            pass  # /proc/PID/io is optional in the kernel; CPU time alone then
        return tuple(counters)

    def moved(self) -> None:
        self._since = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds since the child last moved (0 when it cannot be told)."""
        now, sample = time.monotonic(), self._sample()
        if sample is None or sample != self._last:
            self._last, self._since = sample, now
        return now - self._since


class _Priority:
    """The parent's side of an idle child: raises it once `idle_unless()` is true."""

    def __init__(self, pid: int, idle_unless: Callable[[], bool] | None) -> None:
        self.pid, self.idle_unless = pid, idle_unless

    def check(self) -> None:
        if self.idle_unless is None or not self.idle_unless():
            return
        self.idle_unless = None  # raised once
        try:
            raise_priority(self.pid)
        except PermissionError:
            raise _Replaced from None


def lower_priority() -> None:
    """This process to idle CPU priority: SCHED_IDLE (Linux), else a higher niceness."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(IDLE_NICENESS)


def raise_priority(pid: int) -> None:
    """Process `pid` (lowered by `lower_priority`) back to this process's priority;
    PermissionError where the system does not let an unprivileged process do it."""
    if hasattr(os, "SCHED_IDLE") and os.sched_getscheduler(pid) == os.SCHED_IDLE:
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    if os.getpriority(os.PRIO_PROCESS, pid) != ours:
        os.setpriority(os.PRIO_PROCESS, pid, ours)


def _read_all(fd: int, timeout: float, progress: _Progress, priority: _Priority) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select(): it refuses descriptors of 1024 and above
    poller.register(fd, select.POLLIN | select.POLLHUP)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ChildLost(f"the child process gave no answer within {timeout:.0f} s")
        if not poller.poll(min(left, progress.interval) * 1000):
            priority.check()
            if (still := progress.stalled_for()) >= progress.stall:
                raise ChildStalled(f"the child process made no progress for {still:.1f} s "
                                   "(no CPU time, no bytes read or written)")
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        progress.moved()


def _child(fn: Callable[[], object], read_fd: int, write_fd: int, parent: int, *, idle: bool) -> None:
    gc.freeze()  # first: the parent's objects are never collected here (see `_call_once`)
    gc.enable()  # the child's own garbage is
    status = 0
    try:
        os.close(read_fd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        _die_with(parent)
        if idle:
            lower_priority()
        try:
            payload = pickle.dumps((True, fn()))
        except BaseException as exc:
            payload = pickle.dumps((False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view):]
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def _die_with(parent: int) -> None:
    """Linux: SIGKILL this process when the parent dies (a kill -9 of fabtier must not leave
    a child writing into the lake beside the next run)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
