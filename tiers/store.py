"""Object stores behind URLs. Keys are '/'-separated paths relative to the store's root.

`LocalStore` (file://) is the embedded default. Writes are atomic (temporary file, fsync,
rename, fsync of the directory), so a reader never sees half an object and a crash leaves
either the old object or the new one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from fabtier.errors import ConfigError
from fabtier.fsutil import fsync_dir


class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[tuple[str, int]]: ...
    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]: ...


class LocalStore:
    """A directory on the local file system."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad object key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under `prefix`, sorted by key; temporaries excluded."""
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        found = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith("."):
                    continue
                full = Path(dirpath) / name
                found.append((full.relative_to(self.root).as_posix(), full.stat().st_size))
        return sorted(found)

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), str(self.root)


def open_store(url: str) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    raise ConfigError("[cold] store", f"the {parsed.scheme}:// store is not available in this version",
                      "use a file:// store, or leave the key empty for the local lake")
