"""Object stores behind URLs. Keys are '/'-separated paths relative to the store's root.

Two implementations of one `ObjectStore` protocol, held to one contract test suite
(tests/tiers/test_store_contract.py):

- `LocalStore` (file://) is the embedded default. Writes are atomic (temporary file, fsync,
  rename, fsync of the directory), so a reader never sees half an object and a crash leaves
  either the old object or the new one. It has no storage classes of its own, so it records
  them (in `.storage-classes.json` at its root) when fabtier's lifecycle evaluation moves an
  object, and from then on behaves like S3: an archived object cannot be read. A restore is
  simulated the same way: recorded in `.restores.json` beside it, it becomes readable after
  the configured time for its class and speed (`[retrieval] local_*`) and stays readable for
  the time asked (`keep_s`), as S3's restored copy does.
- `S3Store` (s3://bucket/prefix, optional endpoint_url for MinIO or moto's server): boto3
  for control (put, get, list, delete, storage classes, restores, bucket settings), pyarrow's
  S3FileSystem for the data path (datasets that DuckDB scans). Every put asks for
  server-side encryption, whatever the bucket's default says.

A restore never raises for an answer that only says where the object stands (already being
restored, already restored, not archived): `restore` returns a `core.records.RestoreRequest`.
An object that does not exist (expired) raises `ObjectMissing`.
"""

from __future__ import annotations

import builtins
import email.utils
import json
import math
import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from core.clock import SystemClock
from core.errors import ConfigError, FabtierError
from core.fsutil import fsync_dir
from core.protocols import Clock, ObjectStore
from core.records import ARCHIVED, SPEEDS, STANDARD, STORAGE_CLASSES, ObjectInfo, RestoreRequest
from core.settings import RetrievalSettings


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


def _check_speed(speed: str) -> str:
    if speed not in SPEEDS:
        raise ValueError(f"unknown retrieval speed {speed!r}; one of {', '.join(SPEEDS)}")
    return speed


_ONGOING = re.compile(r'ongoing-request\s*=\s*"(?P<ongoing>true|false)"')
_EXPIRY = re.compile(r'expiry-date\s*=\s*"(?P<expiry>[^"]+)"')


def parse_restore_header(header: str | None, now_ms: int) -> tuple[bool, int | None]:
    """(restore ongoing, restored copy readable until epoch ms) from S3's `x-amz-restore`
    header (head_object's `Restore`): `ongoing-request="true"` while the restore runs,
    `ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"` once the copy can
    be read. A copy whose expiry has passed counts as gone (S3 removes it then)."""
    if not header:
        return False, None
    ongoing = _ONGOING.search(header)
    if ongoing is not None and ongoing["ongoing"] == "true":
        return True, None
    expiry = _EXPIRY.search(header)
    if expiry is None:
        return False, None
    try:
        expiry_ms = int(email.utils.parsedate_to_datetime(expiry["expiry"]).timestamp() * 1000)
    except (TypeError, ValueError):
        return False, None
    return False, (expiry_ms if expiry_ms > now_ms else None)


RestoreTimes = Callable[[str, str], float | None]


class LocalStore:
    """A directory on the local file system."""

    _CLASSES = ".storage-classes.json"
    _RESTORES = ".restores.json"

    def __init__(self, root: Path, *, clock: Clock | None = None, restore_times: RestoreTimes | None = None) -> None:
        """`clock`: what restores are timed by; `restore_times(storage_class, speed)`: seconds a
        restore takes (None: that class has no such speed); default S3's typical times."""
        self.root = root
        self.url = root.as_uri()
        root.mkdir(parents=True, exist_ok=True)
        self.clock: Clock = clock or SystemClock()
        self.restore_times: RestoreTimes = restore_times or RetrievalSettings().local_restore_seconds
        self._lock = threading.RLock()
        self._cache: dict[str, tuple[tuple, dict]] = {}

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
        # A new object starts in STANDARD, as on S3 (and without a restored copy).
        if key in self._classes():
            self._update_classes(key, None)
        if key in self._restores():
            self._update_restores(key, None)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        storage_class = self._classes().get(key)
        if storage_class in ARCHIVED and not self._readable_copy(key):
            raise ObjectArchived(f"{self.url}/{key} is archived ({storage_class}); restore it first")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"{self.url}/{key} does not exist") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        if key in self._classes():
            self._update_classes(key, None)
        if key in self._restores():
            self._update_restores(key, None)

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

    def _info(self, key: str, full: Path, classes: dict[str, str], restores: dict[str, dict],
              now_ms: int) -> ObjectInfo:
        stat = full.stat()
        storage_class = classes.get(key, STANDARD)
        ongoing, expiry = (_restore_state(restores.get(key), now_ms) if storage_class in ARCHIVED
                           else (False, None))
        return ObjectInfo(key, stat.st_size, stat.st_mtime_ns // 1_000_000, storage_class, ongoing, expiry)

    # `builtins.list`: in the class body after `def list`, plain `list` names that method.
    def objects(self, prefix: str) -> builtins.list[ObjectInfo]:
        classes, restores, now = self._classes(), self._restores(), self.clock.now_ms()
        found = [self._info(key, full, classes, restores, now) for key, full in self._walk(prefix)]
        return sorted(found, key=lambda o: o.key)

    def info(self, key: str) -> ObjectInfo:
        try:
            return self._info(key, self._path(key), self._classes(), self._restores(), self.clock.now_ms())
        except FileNotFoundError:
            raise ObjectMissing(f"{self.url}/{key} does not exist") from None

    def folder_stamp(self, prefix: str) -> tuple[int, int] | None:
        """(modification time in ns, inode) of the folder `prefix` names, None when there is
        none: it changes whenever an entry is added to it or removed."""
        try:
            stat = self._path(prefix.rstrip("/")).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stat.st_mtime_ns, stat.st_ino

    def recorded_state(self, infos: builtins.list[ObjectInfo]) -> builtins.list[ObjectInfo]:
        """`infos` with the storage class and restore state this store records now (its
        records are two small files, read again only when they change): what a catalog's
        manifest says of a class or a restore is checked here at no cost."""
        classes, restores, now = self._classes(), self._restores(), self.clock.now_ms()
        out = []
        for info in infos:
            storage_class = classes.get(info.key, STANDARD)
            ongoing, expiry = (_restore_state(restores.get(info.key), now) if storage_class in ARCHIVED
                               else (False, None))
            out.append(ObjectInfo(info.key, info.size, info.last_modified_ms, storage_class, ongoing, expiry))
        return out

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Record a lifecycle transition (the bytes stay where they are). A restored copy
        lasts its time in another archive class too (as on S3), not back in STANDARD."""
        _check_class(storage_class)
        if not self.exists(key):
            raise ObjectMissing(f"{self.url}/{key} does not exist")
        self._update_classes(key, None if storage_class == STANDARD else storage_class)
        if storage_class not in ARCHIVED and key in self._restores():
            self._update_restores(key, None)

    def restore(self, key: str, *, keep_s: float, speed: str) -> RestoreRequest:
        """As S3's RestoreObject: the copy is readable `restore_times(class, speed)` seconds
        from now, for `keep_s` seconds; asked again while it runs, nothing changes; asked
        again while the copy is readable, its time is renewed from now."""
        _check_speed(speed)
        with self._lock:
            if not self.exists(key):
                raise ObjectMissing(f"{self.url}/{key} does not exist")
            storage_class = self._classes().get(key, STANDARD)
            if storage_class not in ARCHIVED:
                return RestoreRequest.NOT_ARCHIVED
            now = self.clock.now_ms()
            entry = self._restores().get(key)
            ongoing, expiry = _restore_state(entry, now)
            if ongoing:
                return RestoreRequest.IN_PROGRESS
            if entry is not None and expiry is not None:
                self._update_restores(key, {**entry, "expires_ms": now + int(keep_s * 1000)})
                return RestoreRequest.RESTORED
            seconds = self.restore_times(storage_class, speed)
            if seconds is None:
                raise StoreError(f"{self.url}/{key} is in {storage_class}, which cannot be restored at "
                                 f"{speed} speed")
            ready = now + int(seconds * 1000)
            self._update_restores(key, {"storage_class": storage_class, "speed": speed, "requested_ms": now,
                                        "ready_ms": ready, "expires_ms": ready + int(keep_s * 1000)})
            return RestoreRequest.STARTED

    def _readable_copy(self, key: str) -> bool:
        ongoing, expiry = _restore_state(self._restores().get(key), self.clock.now_ms())
        return not ongoing and expiry is not None

    def _record(self, name: str) -> dict:
        path = self.root / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {}
        # Parsed again only when the file changed (it is replaced atomically on each update).
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._cache.get(name)
        if cached is None or cached[0] != stamp:
            cached = self._cache[name] = (stamp, json.loads(path.read_bytes()))
        return cached[1]  # callers only read it

    def _update_record(self, name: str, key: str, value: object | None) -> None:
        with self._lock:
            record = dict(self._record(name))
            if value is None:
                record.pop(key, None)
            else:
                record[key] = value
            self._write_atomic(self.root / name, json.dumps(record, sort_keys=True).encode())

    def _classes(self) -> dict[str, str]:
        return self._record(self._CLASSES)

    def _update_classes(self, key: str, storage_class: str | None) -> None:
        self._update_record(self._CLASSES, key, storage_class)

    def _restores(self) -> dict[str, dict]:
        return self._record(self._RESTORES)

    def _update_restores(self, key: str, entry: dict | None) -> None:
        with self._lock:
            now = self.clock.now_ms()
            # The record keeps only restores running and copies not yet gone.
            record = {k: v for k, v in self._restores().items() if k != key and v["expires_ms"] > now}
            if entry is not None:
                record[key] = entry
            self._write_atomic(self.root / self._RESTORES, json.dumps(record, sort_keys=True).encode())

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), str(self.root)


def _restore_state(entry: dict | None, now_ms: int) -> tuple[bool, int | None]:
    """(ongoing, readable until) of a local restore record at `now_ms`."""
    if entry is None:
        return False, None
    if now_ms < entry["ready_ms"]:
        return True, None
    if now_ms < entry["expires_ms"]:
        return False, int(entry["expires_ms"])
    return False, None


_S3_TIERS = {"expedited": "Expedited", "standard": "Standard", "bulk": "Bulk"}


@dataclass(frozen=True)
class S3Limits:
    """How long the S3 clients wait for an answer and how often they try a request.

    botocore's defaults wait 60 s to connect and 60 s for each read: with the 6 attempts this
    store asked for before (botocore's `max_attempts` counts retries only), a store that takes
    the connection and never answers held a seal (and its lock, so every later seal and
    compaction) for over 6 minutes per request. Bounded here: 5 s to connect, 30 s without a
    byte of answer (S3 answers within seconds; 30 s of nothing is a dead connection), 5
    attempts in all in botocore's standard retry mode, which retries 500 InternalError,
    503 SlowDown (as throttling, with backoff and its retry quota), connection errors and
    timeouts: a request to a store that never answers fails after at most 5 x 30 s and the
    backoff between. 30 s is below `fabtier.forked.STALL_LIMIT` too, so a seal child waiting
    on a dead connection tries again (and so moves) before it would be taken for stalled.

    pyarrow's S3FileSystem (the lake's reads: queries, and a seal's look at an hour's other
    files) gets the same connect timeout and attempts, in the AWS SDK's standard retry
    strategy (which retries the same errors). Its read timeout stays the SDK's: on Linux,
    3 s without a byte (checked: through a proxy that never answers, 3 attempts gave up after
    ~10 s), which bounds a hang already and is what every query has waited so far."""

    connect_timeout: float = 5.0  # s
    read_timeout: float = 30.0  # s without a byte of answer
    max_attempts: int = 5  # in all, the first included


# What an S3Store gets when it is not given limits; read when the store is made (tests lower it).
DEFAULT_S3_LIMITS = S3Limits()


class S3Store:
    """A prefix of an S3 bucket (AWS, MinIO, moto's server)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str = "", region: str = "us-east-1",
                 sse: str = "AES256", kms_key_id: str = "", clock: Clock | None = None,
                 restore_status_listed: bool | None = None, limits: S3Limits | None = None) -> None:
        """`restore_status_listed`: whether ListObjectsV2 answers the restore status of
        archived objects (OptionalObjectAttributes=RestoreStatus). AWS does (the default
        without an endpoint_url); moto's server (5.2) ignores the attribute, and MinIO has no
        archive classes, so against an endpoint_url each archived object is asked with
        head_object instead (the listing's other objects need no request). `limits`: the
        clients' timeouts and attempts (default `DEFAULT_S3_LIMITS`)."""
        import boto3
        from botocore.config import Config

        self.clock: Clock = clock or SystemClock()
        self.restore_status_listed = not endpoint_url if restore_status_listed is None else restore_status_listed
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._sse = {"ServerSideEncryption": sse}
        if sse == "aws:kms" and kms_key_id:
            self._sse["SSEKMSKeyId"] = kms_key_id
        self.limits = limits if limits is not None else DEFAULT_S3_LIMITS
        config = Config(region_name=region, retries={"mode": "standard", "total_max_attempts": self.limits.max_attempts},
                        connect_timeout=self.limits.connect_timeout, read_timeout=self.limits.read_timeout,
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
        """Every object under `prefix` with its class, and for archived ones their restore
        state. The cheapest correct way to that state: ListObjectsV2 with
        OptionalObjectAttributes=["RestoreStatus"] answers it for every object in the same
        requests (AWS; an archived object without it was never restored or its copy is
        gone); where the server ignores the attribute (`restore_status_listed` false: moto's
        server, which the tests use), one head_object per archived object, and only for those."""
        full_prefix = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        found = []
        now = self.clock.now_ms()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full_prefix, OptionalObjectAttributes=["RestoreStatus"])
            for page in pages:
                for item in page.get("Contents", []):
                    info = ObjectInfo(self._relative(item["Key"]), int(item["Size"]),
                                      int(item["LastModified"].timestamp() * 1000),
                                      item.get("StorageClass", STANDARD))
                    if info.archived:
                        info = self._with_restore(info, item.get("RestoreStatus"), now)
                    found.append(info)
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(exc, prefix) from None
        return sorted(found, key=lambda o: o.key)

    def _with_restore(self, info: ObjectInfo, status: dict | None, now_ms: int) -> ObjectInfo:
        if status is None and not self.restore_status_listed:
            try:
                return self.info(info.key)
            except ObjectMissing:  # deleted since the listing: as it was listed, never restored
                return info
        if not status:
            return info
        if status.get("IsRestoreInProgress"):
            return ObjectInfo(info.key, info.size, info.last_modified_ms, info.storage_class, True, None)
        expiry = status.get("RestoreExpiryDate")
        expiry_ms = int(expiry.timestamp() * 1000) if expiry is not None else None
        return ObjectInfo(info.key, info.size, info.last_modified_ms, info.storage_class, False,
                          expiry_ms if expiry_ms is not None and expiry_ms > now_ms else None)

    def info(self, key: str) -> ObjectInfo:
        """One object as head_object describes it, with its restore state (`x-amz-restore`)."""
        full = self._key(key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._error(exc, key) from None
        ongoing, expiry = parse_restore_header(head.get("Restore"), self.clock.now_ms())
        storage_class = head.get("StorageClass") or STANDARD
        return ObjectInfo(key, int(head["ContentLength"]), int(head["LastModified"].timestamp() * 1000),
                          storage_class, ongoing and storage_class in ARCHIVED,
                          expiry if storage_class in ARCHIVED else None)

    def restore(self, key: str, *, keep_s: float, speed: str) -> RestoreRequest:
        """RestoreObject with Days (`keep_s` rounded up to whole days, at least 1: S3 counts
        days) and the retrieval tier of `speed`."""
        _check_speed(speed)
        full = self._key(key)
        days = max(1, math.ceil(keep_s / 86400))
        from botocore.exceptions import ClientError
        try:
            answer = self.client.restore_object(Bucket=self.bucket, Key=full, RestoreRequest={
                "Days": days, "GlacierJobParameters": {"Tier": _S3_TIERS[speed]}})
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "RestoreAlreadyInProgress":
                return RestoreRequest.IN_PROGRESS
            if code == "InvalidObjectState":  # "not allowed for the object's current storage class"
                return RestoreRequest.NOT_ARCHIVED
            raise self._error(exc, key) from None
        except Exception as exc:
            raise self._error(exc, key) from None
        # 202 Accepted: a restore started; 200 OK: a restored copy exists (its days renewed).
        status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 202)
        return RestoreRequest.RESTORED if status == 200 else RestoreRequest.STARTED

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
            options: dict = {"region": self.region, "connect_timeout": self.limits.connect_timeout,
                             "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.limits.max_attempts)}
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
               kms_key_id: str = "", clock: Clock | None = None,
               restore_times: RestoreTimes | None = None) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)), clock=clock, restore_times=restore_times)
    if parsed.scheme == "s3" and parsed.netloc:
        bucket, prefix = parse_s3_url(url)
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region, sse=sse, kms_key_id=kms_key_id,
                       clock=clock)
    raise ConfigError("[cold] store", f"{url!r} is not a store URL",
                      "use file:///absolute/path or s3://bucket/prefix, or leave it empty for the local lake")


def settings_store(settings, *, clock: Clock | None = None) -> ObjectStore:
    """The cold store a `core.settings.Settings` names; `clock` times restores (and, on S3,
    the expiry of restored copies)."""
    from tiers.catalog import CatalogedStore

    cold = settings.cold
    store = open_store(settings.store_url, endpoint_url=cold.endpoint_url, region=cold.region,
                       sse=cold.sse, kms_key_id=cold.kms_key_id, clock=clock,
                       restore_times=settings.retrieval.local_restore_seconds)
    return CatalogedStore(store)  # the lake's catalog (tiers.catalog) in front of it
