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
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


class ChildFailed(Exception):
    """The function raised in the child; the message carries its traceback."""


class ChildLost(Exception):
    """The child died or hung without an answer (nothing is known of what it did)."""


def available() -> bool:
    return hasattr(os, "fork")


def call_in_fork(fn: Callable[[], T], *, timeout: float) -> T:
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    # The child must not finalise the parent's garbage: a collection in the child would run
    # destructors of objects it only has a copy of (a DuckDB connection among them crashed
    # the child). Frozen objects are never collected; the parent unfreezes right after.
    gc.freeze()
    try:
        pid = os.fork()
    except OSError as exc:  # ENOMEM, EAGAIN (a process limit): the caller does it itself
        gc.unfreeze()
        os.close(read_fd)
        os.close(write_fd)
        raise ChildLost(f"cannot fork: {exc}") from None
    if pid != 0:
        gc.unfreeze()
    if pid == 0:
        _child(fn, read_fd, write_fd, parent)  # never returns
    os.close(write_fd)
    try:
        payload = _read_all(read_fd, timeout)
    except ChildLost:
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


def _read_all(fd: int, timeout: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select(): it refuses descriptors of 1024 and above
    poller.register(fd, select.POLLIN | select.POLLHUP)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise ChildLost(f"the child process gave no answer within {timeout:.0f} s")
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _child(fn: Callable[[], object], read_fd: int, write_fd: int, parent: int) -> None:
    status = 0
    try:
        os.close(read_fd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        _die_with(parent)
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
