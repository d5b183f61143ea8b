"""The data directory's lock (one running pipeline owns it; readers share it) and its identity."""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

from core.errors import UserError
from core.fsutil import fsync_dir


class DataDirBusy(UserError):
    pass


class DataDirLock:
    """An flock on `{data_dir}/.fabtier.lock`: exclusive for the pipeline, shared for readers."""

    def __init__(self, data_dir: Path, *, exclusive: bool) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / ".fabtier.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DataDirBusy(f"another fabtier process is using the data directory {data_dir}; "
                              "stop it, or use a different data_dir") from None
        if exclusive:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n".encode())

    def close_inherited(self) -> None:
        """In a forked child: close its copy of the descriptor, without LOCK_UN (the lock
        belongs to the open file, which the parent shares: unlocking here would unlock the
        parent). Then the lock ends with the parent, not with whichever dies last."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def is_locked(data_dir: Path) -> bool:
    """True when a pipeline holds the data directory."""
    path = data_dir / ".fabtier.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def sql_spill_dir(data_dir: Path) -> str | None:
    """Where DuckDB spills a query bigger than `[api] sql_memory_limit`; None where it
    cannot be made (a read-only data directory: such a query then fails with DuckDB's
    out-of-memory message instead)."""
    path = Path(data_dir) / "tmp" / "sql"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(path)


_IDENTITY = ".fabtier-id"


def identity(data_dir: Path) -> str | None:
    """The data directory's identity (a random id written on its first open), or None for a
    directory no pipeline has opened. A running instance shows it in `/health`, so that the
    command line knows whether the instance it reaches owns the directory it was given."""
    try:
        return (data_dir / _IDENTITY).read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def ensure_identity(data_dir: Path) -> str:
    """The identity, made once (atomically) if the directory has none yet."""
    found = identity(data_dir)
    if found is not None:
        return found
    data_dir.mkdir(parents=True, exist_ok=True)
    made = uuid.uuid4().hex
    tmp = data_dir / f"{_IDENTITY}.{made}.tmp"
    tmp.write_text(made + "\n", encoding="utf-8")
    try:
        os.link(tmp, data_dir / _IDENTITY)  # fails if another process made it first
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    fsync_dir(data_dir)
    return identity(data_dir) or made
