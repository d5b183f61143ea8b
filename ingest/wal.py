"""The write-ahead log: append, group commit, rotate into segments, replay.

Every accepted message is appended here before it is acknowledged. Appends are buffered;
`commit()` flushes and fsyncs once for everything appended so far and hands back the tokens
(MQTT message ids) that are now durable, so that one fsync acknowledges many messages.
A segment is closed by `rotate()`; the seal job turns a closed segment into Parquet and then
deletes it, so a segment file that still exists is, by definition, not yet sealed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from core.errors import DurabilityError
from core.fsutil import fsync_dir
from ingest.walformat import SEGMENT_MAGIC, Record, decode_records

_SUFFIX = ".wal"


def segment_numbers(directory: Path) -> list[int]:
    """The numbers of the segments in `directory`, oldest first."""
    if not directory.exists():
        return []
    return sorted(int(p.stem) for p in directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())


def read_segment(path: Path) -> list[Record]:
    records, _ = decode_records(path.read_bytes())
    return records


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
        self._leftover = existing
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._tokens: list[int] = []
        self._active = reuse if reuse is not None else (existing[-1] + 1) if existing else 1
        self._file = self._open(self._active, again=reuse is not None)
        self._failed: BaseException | None = None
        self._dirty = False
        self.bytes_appended = 0
        self._active_bytes = 0  # records written to the active segment since it was opened

    def _open(self, number: int, *, again: bool = False):
        path = self.path(number)
        handle = open(path, "wb" if again else "xb", buffering=1 << 20)
        handle.write(SEGMENT_MAGIC)
        handle.flush()
        os.fsync(handle.fileno())
        fsync_dir(self.directory)
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
                self._file.write(record)
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
            data = b"".join(records)
            if data:
                self._file.write(data)
                self.bytes_appended += len(data)
                self._active_bytes += len(data)
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
        """Make every appended record durable; return the tokens of those records."""
        with self._commit_lock:
            with self._lock:
                tokens, self._tokens = self._tokens, []
                self._dirty = False
                try:
                    self._file.flush()
                    fd = self._file.fileno()
                except OSError as exc:
                    self._fail(exc)
            try:
                os.fsync(fd)
            except OSError as exc:
                with self._lock:
                    self._fail(exc)
            return tokens

    def _fail(self, exc: OSError) -> None:
        # After a failed fsync the kernel may have dropped the dirty pages: nothing written
        # since the last good commit can be trusted, so the log refuses all further work.
        self._failed = exc
        raise DurabilityError(f"the write-ahead log could not be made durable: {exc}") from exc

    def rotate(self) -> int:
        """Close the active segment durably and start the next; returns the closed number.

        Tokens of records in the closed segment stay queued for the next `commit()`.
        """
        with self._commit_lock, self._lock:
            if self._failed is not None:
                raise DurabilityError(f"the write-ahead log failed earlier: {self._failed}")
            closed = self._active
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._active += 1
                self._file = self._open(self._active)
                self._active_bytes = 0
            except OSError as exc:
                self._fail(exc)
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
        tokens = self.commit()
        with self._lock:
            self._file.close()
        return tokens
