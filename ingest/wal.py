"""The write-ahead log: append, group commit, rotate into segments, replay.

Every accepted message is appended here before it is acknowledged. Appends are buffered in
memory; `commit()` writes and fsyncs once for everything appended so far and hands back the
tokens (MQTT message ids) that are now durable, so that one fsync acknowledges many messages.
A segment is closed by `rotate()`; the seal job turns a closed segment into Parquet and then
deletes it, so a segment file that still exists is, by definition, not yet sealed.

A full disk (ENOSPC, EDQUOT) is not a failure of the log: the segment is cut back to its last
durable length, the records stay in memory with their tokens, and `commit()` raises `LogFull`
until they fit; nothing is acknowledged meanwhile. Any other write or fsync error is final.
A segment found at start with bytes after its last whole record (a write torn by a crash) is
logged; replay ends at the last whole record.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

from core.errors import DurabilityError, RetryableError
from core.fsutil import fsync_dir
from ingest.walformat import SEGMENT_MAGIC, Record, decode_records, intact_length

log = logging.getLogger("fabtier.ingest")

_SUFFIX = ".wal"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class LogFull(RetryableError):
    """The log's file system has no room for what was appended; nothing of it is durable or
    acknowledged yet, and it is all still in memory for the next try."""

    retry_after = 0.2


def segment_numbers(directory: Path) -> list[int]:
    """The numbers of the segments in `directory`, oldest first."""
    if not directory.exists():
        return []
    return sorted(int(p.stem) for p in directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())


def read_segment(path: Path) -> list[Record]:
    records, _ = decode_records(path.read_bytes())
    return records


def _note_torn_tail(path: Path) -> None:
    """Say so when a segment ends in bytes that are no whole record: replay drops them."""
    data = path.read_bytes()
    whole = intact_length(data)
    if whole < len(data):
        log.warning("log segment %s: %d byte(s) after the last whole record (at byte %d) are dropped: a write "
                    "torn by a crash; nothing in them was acknowledged, so the broker delivers it again",
                    path.name, len(data) - whole, whole)


_PIECES_PER_CALL = 1024  # IOV_MAX on Linux: buffers one pwritev may take


def _write_all(fd: int, records: list[bytes], offset: int) -> None:
    """The records one after another from `offset`, each from its own bytes (pwritev), not
    first copied into one buffer: that buffer grew by 35 MB/s at 1.5 M readings/s, into pages
    the kernel had to find and zero again after every commit (at 100,000 sensors, `bytearray
    +=` held a fifth of the ingest thread's samples)."""
    pieces = [memoryview(record) for record in records if record]
    if not hasattr(os, "pwritev"):  # Windows: one buffer after all
        pieces = [memoryview(b"".join(pieces))] if pieces else []
    while pieces:
        batch = pieces[:_PIECES_PER_CALL]
        written = os.pwritev(fd, batch, offset) if len(batch) > 1 else os.pwrite(fd, batch[0], offset)
        offset += written
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        if done < len(batch):  # a short write: the rest of that record first
            batch[done] = batch[done][written:]
        pieces = batch[done:] + pieces[len(batch):]


class WriteAheadLog:
    """Segmented append-only log with group commit; thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        existing = segment_numbers(directory)
        # The last segment holding no record (a clean stop, or a crash before anything was
        # written to it) is taken up again as the active one: nothing to recover in it, and
        # its number is kept, since numbers name lake files and must never be used twice.
        reuse = existing[-1] if existing and SEGMENT_MAGIC.startswith(self.path(existing[-1]).read_bytes()) else None
        if reuse is not None:
            existing = existing[:-1]
        for number in existing:
            _note_torn_tail(self.path(number))
        self._leftover = existing
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._tokens: list[int] = []
        # Appended, not yet written. Kept in memory (not in a file object's buffer) so that a
        # write the disk has no room for can be cut off the file and tried again whole.
        self._records: list[bytes] = []
        self._active = reuse if reuse is not None else (existing[-1] + 1) if existing else 1
        self._file = self._open(self._active, again=reuse is not None)
        self._size = len(SEGMENT_MAGIC)  # durable length of the active segment
        self._failed: BaseException | None = None
        self._dirty = False
        self.bytes_appended = 0
        self._active_bytes = 0  # records appended to the active segment since it was opened

    def _open(self, number: int, *, again: bool = False):
        path = self.path(number)
        handle = open(path, "wb" if again else "xb", buffering=0)
        try:
            _write_all(handle.fileno(), [SEGMENT_MAGIC], 0)
            os.fsync(handle.fileno())
            fsync_dir(self.directory)
        except OSError:
            # A segment without its magic would read as garbage: none rather than that.
            handle.close()
            path.unlink(missing_ok=True)
            raise
        return handle

    def path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{_SUFFIX}"

    @property
    def active(self) -> int:
        return self._active

    def segments(self) -> list[int]:
        """Every segment on disk, the active one included: none of them is sealed yet."""
        return segment_numbers(self.directory)

    def leftover_segments(self) -> list[int]:
        """Segments found at start-up: written by an earlier run and not yet sealed."""
        return list(self._leftover)

    def append(self, record: bytes, token: int | None = None) -> int:
        """Buffer one record (may be empty, to queue only a token); `token` comes back from
        the `commit()` that makes it durable. Returns the segment the record went to."""
        with self._lock:
            if self._failed is not None:
                raise DurabilityError(f"the write-ahead log failed earlier: {self._failed}")
            if record:
                self._records.append(record)
                self.bytes_appended += len(record)
                self._active_bytes += len(record)
            if token is not None:
                self._tokens.append(token)
            self._dirty = True
            return self._active

    def append_many(self, records: list[bytes], tokens: list[int]) -> int:
        """Buffer records and queue tokens in one step; returns the segment they went to."""
        with self._lock:
            if self._failed is not None:
                raise DurabilityError(f"the write-ahead log failed earlier: {self._failed}")
            self._records.extend(records)
            data = sum(len(r) for r in records)
            if data:
                self.bytes_appended += data
                self._active_bytes += data
            self._tokens.extend(tokens)
            self._dirty = True
            return self._active

    @property
    def segment_of_next_append(self) -> int:
        """The segment the next append goes to (stable while the caller blocks rotation)."""
        return self._active

    @property
    def active_empty(self) -> bool:
        """True while the active segment holds no record (rotating it would seal nothing)."""
        return self._active_bytes == 0

    @property
    def dirty(self) -> bool:
        """True when something was appended since the last commit."""
        return self._dirty

    def commit(self) -> list[int]:
        """Make every appended record durable; return the tokens of those records.

        Raises `LogFull` (everything kept for the next call) when the disk has no room."""
        with self._commit_lock:
            with self._lock:
                if self._failed is not None:
                    raise DurabilityError(f"the write-ahead log failed earlier: {self._failed}")
                tokens, self._tokens = self._tokens, []
                data, self._records = self._records, []
                self._dirty = False
            # Written outside the append lock: the ingest thread goes on appending meanwhile.
            try:
                self._write_durably(data)
            except LogFull:
                with self._lock:
                    self._records[:0] = data
                    self._tokens[:0] = tokens
                    self._dirty = True
                raise
            except OSError as exc:
                with self._lock:
                    self._fail(exc)
            return tokens

    def _write_durably(self, data: list[bytes]) -> None:
        """Write the records `data` after the durable part of the active segment and fsync;
        with the commit lock held. A full disk cuts the segment back and raises LogFull; any other OSError
        (the truncation's too) is the caller's to make final."""
        fd = self._file.fileno()
        size = sum(len(record) for record in data)
        try:
            _write_all(fd, data, self._size)
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            # Nothing past the last good commit may stay: a partial record there would end
            # every later replay before the records written after it once there is room.
            # Pages a failed fsync left behind go with it; the next try writes them anew.
            os.ftruncate(fd, self._size)
            raise LogFull(f"the write-ahead log's disk is full: {exc}; {size} bytes wait in memory, "
                          "unacknowledged, until there is room") from exc
        self._size += size

    def _fail(self, exc: OSError) -> None:
        # After a failed fsync the kernel may have dropped the dirty pages: nothing written
        # since the last good commit can be trusted, so the log refuses all further work.
        self._failed = exc
        raise DurabilityError(f"the write-ahead log could not be made durable: {exc}") from exc

    def rotate(self) -> int:
        """Close the active segment durably and start the next; returns the closed number.

        Tokens of records in the closed segment stay queued for the next `commit()`. On a
        full disk nothing changes (LogFull): the active segment stays active.
        """
        with self._commit_lock, self._lock:
            if self._failed is not None:
                raise DurabilityError(f"the write-ahead log failed earlier: {self._failed}")
            closed = self._active
            try:
                self._write_durably(self._records)
            except LogFull:
                raise  # the buffer is kept as it is
            except OSError as exc:
                self._fail(exc)
            self._records = []
            try:
                handle = self._open(closed + 1)
            except OSError as exc:
                if exc.errno in _NO_SPACE:
                    raise LogFull(f"no room for a new log segment: {exc}") from exc
                self._fail(exc)
            self._file.close()
            self._file = handle
            self._active = closed + 1
            self._size = len(SEGMENT_MAGIC)
            self._active_bytes = 0
            return closed

    def delete(self, number: int) -> None:
        """Remove a sealed segment."""
        if number == self._active:
            raise ValueError("the active segment cannot be deleted")
        self.path(number).unlink(missing_ok=True)
        fsync_dir(self.directory)
        if number in self._leftover:
            self._leftover.remove(number)

    def close(self) -> list[int]:
        try:
            tokens = self.commit()
        except LogFull as exc:
            # Unacknowledged, so not lost: the broker delivers it again on the next start.
            log.warning("closing the write-ahead log: %s; left to the broker to deliver again", exc)
            tokens = []
        with self._lock:
            self._file.close()
        return tokens
