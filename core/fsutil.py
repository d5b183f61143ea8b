"""Small durability helpers for local files."""

from __future__ import annotations

import os
from pathlib import Path


def append_lines(path: Path, lines: bytes) -> None:
    """Append `lines` (each ending in a newline) to `path` and fsync it: durable when it
    returns. A line torn by a crash must not swallow these: they start on a new line. A file
    created here has its directory entry made durable too. The caller serialises appends."""
    created = not path.exists()
    with open(path, "ab+") as handle:
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                lines = b"\n" + lines
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new, renamed or deleted file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
