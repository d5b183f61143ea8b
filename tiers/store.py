"""Object stores behind URLs. Keys are '/'-separated paths relative to the store's root.

Two implementations of one `ObjectStore` protocol, held to one contract test suite
(tests/tiers/test_store_contract.py):

- `LocalStore` (file://) is the embedded default. Writes are atomic (temporary file, fsync,
  rename, fsync of the directory), so a reader never sees half an object and a crash leaves
  either the old object or the new one. It has no storage classes of its own, so it records
  them (in `.storage-classes.json` at its root) when fabtier's lifecycle evaluation moves an
  object, and from then on behaves like S3: an archived object cannot be read.
- `S3Store` (s3://bucket/prefix, optional endpoint_url for MinIO or moto's server): boto3
  for control (put, get, list, delete, storage classes, bucket settings), pyarrow's
  S3FileSystem for the data path (datasets that DuckDB scans). Every put asks for
  server-side encryption, whatever the bucket's default says.
"""

from __future__ import annotations

import builtins
import json
import os
import threading
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from core.errors import ConfigError, FabtierError
from core.fsutil import fsync_dir
from core.protocols import ObjectStore
from core.records import ARCHIVED, STANDARD, STORAGE_CLASSES, ObjectInfo


class StoreError(FabtierError):
    """An object store refused or failed an operation."""


class ObjectMissing(StoreError, KeyError):
    """The object does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "object missing"


class ObjectArchived(StoreError):
    """The object is in an archive class and must be restored before it can be read."""


def check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
        raise ValueError(f"bad object key {key!r}")
    return key


def _check_class(storage_class: str) -> str:
    if storage_class not in STORAGE_CLASSES:
        raise ValueError(f"unknown storage class {storage_class!r}")
    return storage_class


class LocalStore:
    """A directory on the local file system."""

    _CLASSES = ".storage-classes.json"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._classes_cache: tuple[tuple, dict[str, str]] | None = None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._write_atomic(path, data)
        # A new object starts in STANDARD, as on S3.
        if key in self._classes():
            self._update_classes(key, None)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if self._classes().get(key) in ARCHIVED:
            raise ObjectArchived(f"{self.url}/{key} is archived ({self._classes()[key]}); restore it first")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"{self.url}/{key} does not exist") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        if key in self._classes():
            self._update_classes(key, None)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _walk(self, prefix: str):
        # The deepest directory the prefix names; a partial last level is filtered below.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(folder) if folder else self.root
        if not base.exists():
            return
        for dirpath, dirnames, files in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue  # temporaries and the storage-class record
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key, full

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under `prefix`, sorted by key; temporaries excluded."""
        return sorted((key, full.stat().st_size) for key, full in self._walk(prefix))

    # `builtins.list`: in the class body after `def list`, plain `list` names that method.
    def objects(self, prefix: str) -> builtins.list[ObjectInfo]:
        classes = self._classes()
        found = []
        for key, full in self._walk(prefix):
            stat = full.stat()
            found.append(ObjectInfo(key, stat.st_size, stat.st_mtime_ns // 1_000_000,
                                    classes.get(key, STANDARD)))
        return sorted(found, key=lambda o: o.key)

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Record a lifecycle transition (the bytes stay where they are)."""
        _check_class(storage_class)
        if not self.exists(key):
            raise ObjectMissing(f"{self.url}/{key} does not exist")
        self._update_classes(key, None if storage_class == STANDARD else storage_class)

    def _classes(self) -> dict[str, str]:
        path = self.root / self._CLASSES
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {}
        # Parsed again only when the file changed (it is replaced atomically on each update).
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._classes_cache is None or self._classes_cache[0] != stamp:
            self._classes_cache = (stamp, json.loads(path.read_bytes()))
        return self._classes_cache[1]  # callers only read it

    def _update_classes(self, key: str, storage_class: str | None) -> None:
        with self._lock:
            classes = dict(self._classes())
            if storage_class is None:
                classes.pop(key, None)
            else:
                classes[key] = storage_class
            self._write_atomic(self.root / self._CLASSES, json.dumps(classes, sort_keys=True).encode())

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), str(self.root)


class S3Store:
    """A prefix of an S3 bucket (AWS, MinIO, moto's server)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str = "", region: str = "us-east-1",
                 sse: str = "AES256", kms_key_id: str = "") -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._sse = {"ServerSideEncryption": sse}
        if sse == "aws:kms" and kms_key_id:
            self._sse["SSEKMSKeyId"] = kms_key_id
        config = Config(region_name=region, retries={"mode": "standard", "max_attempts": 5},
                        # MinIO and moto's server answer on one host: path-style addressing.
                        s3={"addressing_style": "path" if endpoint_url else "auto"})
        self.client = boto3.client("s3", endpoint_url=endpoint_url or None, config=config)
        self._fs: pafs.S3FileSystem | None = None

    def after_fork(self) -> None:
        """In a forked child: a client of its own (the parent's pooled connections are the
        parent's; two processes talking over one socket would mix their answers)."""
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint_url or None, config=self.client.meta.config)
        self._fs = None

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _error(self, exc: Exception, key: str) -> Exception:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectMissing(f"{self.url}/{key} does not exist")
            if code == "InvalidObjectState":
                return ObjectArchived(f"{self.url}/{key} is archived; restore it first")
            return StoreError(f"S3 refused an operation on {self.url}/{key}: {code}: "
                              f"{exc.response.get('Error', {}).get('Message', '')}")
        return StoreError(f"S3 failed on {self.url}/{key}: {type(exc).__name__}: {exc}")

    def put(self, key: str, data: bytes) -> None:
        full = self._key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, **self._sse)
        except Exception as exc:
            raise self._error(exc, key) from None

    def get(self, key: str) -> bytes:
        full = self._key(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
        except Exception as exc:
            raise self._error(exc, key) from None

    def delete(self, key: str) -> None:
        full = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._error(exc, key) from None

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
            return True
        except Exception as exc:
            error = self._error(exc, key)
            if isinstance(error, ObjectMissing):
                return False
            raise error from None

    def objects(self, prefix: str) -> list[ObjectInfo]:
        full_prefix = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    found.append(ObjectInfo(self._relative(item["Key"]), int(item["Size"]),
                                            int(item["LastModified"].timestamp() * 1000),
                                            item.get("StorageClass", STANDARD)))
        except Exception as exc:
            raise self._error(exc, prefix) from None
        return sorted(found, key=lambda o: o.key)

    def list(self, prefix: str) -> list[tuple[str, int]]:
        return [(o.key, o.size) for o in self.objects(prefix)]

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Rewrite the object in place in another class (S3's lifecycle does this by itself;
        this is for explicit moves and tests)."""
        _check_class(storage_class)
        full = self._key(key)
        try:
            self.client.copy_object(Bucket=self.bucket, Key=full, CopySource={"Bucket": self.bucket, "Key": full},
                                    StorageClass=storage_class, MetadataDirective="COPY", **self._sse)
        except Exception as exc:
            raise self._error(exc, key) from None

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        if self._fs is None:
            options: dict = {"region": self.region}
            if self.endpoint_url:
                parsed = urlparse(self.endpoint_url)
                options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
            # Credentials: the AWS SDK's default chain, the same sources boto3 reads.
            self._fs = pafs.S3FileSystem(**options)
        root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return self._fs, root


def parse_s3_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    return parsed.netloc, parsed.path.strip("/")


def open_store(url: str, *, endpoint_url: str = "", region: str = "us-east-1", sse: str = "AES256",
               kms_key_id: str = "") -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3" and parsed.netloc:
        bucket, prefix = parse_s3_url(url)
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region, sse=sse, kms_key_id=kms_key_id)
    raise ConfigError("[cold] store", f"{url!r} is not a store URL",
                      "use file:///absolute/path or s3://bucket/prefix, or leave it empty for the local lake")


def settings_store(settings) -> ObjectStore:
    """The cold store a `core.settings.Settings` names."""
    cold = settings.cold
    return open_store(settings.store_url, endpoint_url=cold.endpoint_url, region=cold.region,
                      sse=cold.sse, kms_key_id=cold.kms_key_id)
