"""Memory for the unsealed rows' merged blocks, backed ahead of use by a thread of its own.

Why: appending merges a segment's chunks into a block every 65,536 readings
(`tiers.unsealed._merge_chunks`; a statement merges the rest, `_merge_tail`), and the block's
~1.4 MB (~1.9 MB once SQL's view keeps its name codes there) are memory the process never
wrote: each 4 KiB page costs a fault and a page of zeros on first write. Where the host backs
a virtual machine's memory only as it is first used (this machine, a Firecracker guest), that
is ~9 us a page: `numpy.ones` over 16 GiB took 38.8 s the first time, 2.9 s the next. In
`fabtier bench ingest` the merge's copy was then 14-15 % of the ingest thread's py-spy
samples (4,000 sensors: 354 of 2,274; 100,000: 291 of 2,714), where a process whose pages
were warm spent 5 ns a reading on it. A daemon thread asks the kernel to back the next blocks
first (`madvise(MADV_POPULATE_WRITE)` through `tiers.prefault`'s loop, which runs without the
interpreter lock), on the core the ingest thread is not using, and the merge copies into one.

Only the first `backed` bytes of a block are backed ahead (what a merge of the usual size
fills); a larger merge faults in the rest as before. Linux 5.14 and later; elsewhere no thread
starts and merges allocate as before.

A block whose rows are gone (its segment sealed and dropped, no SQL view holding it) is handed
out again, its pages still backed, up to `keep` of them: a segment is sealed every few seconds
and the next one fills as many blocks again, so at a steady rate no block is made anew. Without
this the thread backed ~27 MB a second of fresh pages at 1.3 M readings/s (6,700 faults a
second, ~60 ms of a core that the broker and the seal child want too). A block comes back when
the last array over it is freed (a finalizer on the array every view of it derives from), never
while a merged column, an Arrow batch of SQL's view or a statement reads it; a forked seal child
reads the segment's blocks before the segment is dropped.
"""

from __future__ import annotations

import mmap
import threading
import weakref
from collections import deque
from collections.abc import Callable

import numpy as np

from tiers import prefault

_IDLE_CHECK_S = 5.0  # how often an idle thread looks whether its owner is gone


class BackedBlocks:
    """Anonymous mappings of `size` bytes whose first `backed` bytes a daemon thread backs
    before `take` hands them out, `ready` at a time, and up to `keep` handed out again once
    freed; the thread ends once `owner` is gone."""

    def __init__(self, owner: object, populate: Callable[[int, int, int, int, int], int], *, size: int,
                 backed: int, ready: int = 2, keep: int = 0) -> None:
        self.size, self.backed = size, min(backed, size)
        self._owner = weakref.ref(owner)
        self._populate = populate
        self._want = ready
        self._keep = max(keep, ready)
        self._ready: deque[mmap.mmap] = deque()
        # Reentrant: a block's finalizer (`_returned`) may run in a thread that holds it already,
        # when a collection starts inside `take` or `_run`.
        self._wake = threading.Condition(threading.RLock())
        self.taken = self.missed = self.failed = self.reused = 0  # read by tests and the bench's profile
        self._thread = threading.Thread(target=self._run, name="unsealed-blocks", daemon=True)
        self._thread.start()

    def take(self, nbytes: int) -> memoryview | None:
        """A writable buffer of `nbytes` in a block backed ahead; None when `nbytes` is over
        `size` or no block is ready yet (the caller allocates as it would have)."""
        block = None
        if nbytes <= self.size:
            with self._wake:
                if self._ready:
                    block = self._ready.popleft()
                    self._wake.notify()
        if block is None:
            self.missed += 1
            return None
        self.taken += 1
        # Every array over the block derives from `whole`: once they are all freed, so is it.
        whole = np.frombuffer(block, np.uint8)
        weakref.finalize(whole, self._returned, block).atexit = False  # nothing to give back at exit
        return whole.data[:nbytes]

    def _returned(self, block: mmap.mmap) -> None:
        """A block nothing reads any more: handed out again while fewer than `keep` wait,
        else unmapped (its last reference goes with this call)."""
        with self._wake:
            if len(self._ready) < self._keep:
                self._ready.append(block)
                self.reused += 1
                self._wake.notify_all()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Until `ready` blocks wait (for tests)."""
        with self._wake:
            return self._wake.wait_for(lambda: len(self._ready) >= self._want, timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                while len(self._ready) >= self._want:
                    self._wake.wait(timeout=_IDLE_CHECK_S)
                    if self._owner() is None:
                        return
            block = mmap.mmap(-1, self.size)  # shared, as the ring's: a forked seal reads it, never copies it
            pages = np.frombuffer(block, np.uint8)  # for its address; let go before the block is handed out
            self.failed += prefault.back_span(self._populate, pages.ctypes.data, self.backed)
            del pages
            with self._wake:
                self._ready.append(block)
                self._wake.notify_all()
