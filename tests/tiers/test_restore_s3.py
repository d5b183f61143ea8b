"""Restores on the S3 store, against moto's server over HTTP, through a proxy that makes them
take time.

moto restores an archived object at once (RestoreObject answers 202 and the object is readable
right away), and its restored copies never expire. S3 takes minutes to hours and removes the
copy after its days. So requests pass through `RestoreHoldingS3`, which answers like S3 does
while a restore runs, until the test releases it: head_object says `x-amz-restore:
ongoing-request="true"`, a GET is refused with InvalidObjectState, and a second RestoreObject
is refused with 409 RestoreAlreadyInProgress. After `expire`, an object looks as if its copy
was removed (no `x-amz-restore`, GET refused) until it is restored again. It counts the
RestoreObject calls per key (and the Days each asked for). Everything else goes to moto as is.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from urllib.parse import unquote, urlparse

import boto3
import pytest

from core.clock import ManualClock
from core.records import RestoreRequest
from tests.faultproxy import ForwardingHandler, serve
from tiers.store import ObjectArchived, ObjectMissing, S3Store, parse_restore_header


def _error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>proxy</RequestId></Error>").encode()


class RestoreHoldingS3:
    """A proxy in front of moto's S3 that holds restores in progress (see the module doc)."""

    def __init__(self, upstream: str, *, hold: bool = True) -> None:
        self.upstream = urlparse(upstream)
        self.hold = hold  # new restores are held until `release`
        self.held: set[str] = set()  # "bucket/key"
        self.expired: set[str] = set()
        self.restore_calls: Counter[str] = Counter()
        self.restore_days: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(ForwardingHandler):
            upstream = self.upstream

            def _handle(self) -> None:
                body = self._body()
                parsed = urlparse(self.path)
                target = unquote(parsed.path).lstrip("/")  # path-style: bucket/key
                query = parsed.query
                if self.command == "POST" and re.search(r"(^|&)restore(=|&|$)", query):
                    with outer._lock:
                        outer.restore_calls[target] += 1
                        days = re.search(rb"<Days>(\d+)</Days>", body)
                        outer.restore_days.setdefault(target, []).append(int(days.group(1)) if days else 0)
                        if target in outer.held:
                            return self._reply(409, {"Content-Type": "application/xml"}, _error(
                                "RestoreAlreadyInProgress", "Object restore is already in progress"))
                    status, headers, data = self._forward(body)
                    with outer._lock:
                        if status in (200, 202) and target in outer.expired:
                            outer.expired.discard(target)
                            status = 202  # the copy was gone: this is a new restore
                        if status == 202 and outer.hold:
                            outer.held.add(target)
                    return self._reply(status, headers, data)
                with outer._lock:
                    blocked = target in outer.held or target in outer.expired
                    ongoing = target in outer.held
                if blocked and self.command == "GET" and "/" in target and not query.startswith("list"):
                    return self._reply(403, {"Content-Type": "application/xml"}, _error(
                        "InvalidObjectState", "The operation is not valid for the object's storage class"))
                status, headers, data = self._forward(body)
                if blocked and self.command == "HEAD":
                    headers = {k: v for k, v in headers.items() if k.lower() != "x-amz-restore"}
                    if ongoing:
                        headers["x-amz-restore"] = 'ongoing-request="true"'
                self._reply(status, headers, data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.server, self.url = serve(Handler, "restore-holding-s3")

    def _matching(self, names: set[str], suffix: str | None) -> set[str]:
        return {n for n in names if suffix is None or n.endswith(suffix)}

    def release(self, suffix: str | None = None) -> int:
        """Complete the held restores (of keys ending in `suffix`, or all)."""
        with self._lock:
            done = self._matching(self.held, suffix)
            self.held -= done
            return len(done)

    def expire(self, suffix: str | None = None, *, bucket: str) -> int:
        """Make restored copies (of keys ending in `suffix`, or all restored ones) go away."""
        client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")
        gone = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                name = f"{bucket}/{item['Key']}"
                if (suffix is None or name.endswith(suffix)) and name in self.restore_calls and name not in self.held:
                    with self._lock:
                        self.expired.add(name)
                    gone += 1
        return gone

    def calls(self, suffix: str = "") -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self.restore_calls.items() if k.endswith(suffix)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- the header parser ------------------------------------------------------------------
def test_restore_header():
    now = 1_764_000_000_000  # 2025-11-24T16:00Z
    assert parse_restore_header(None, now) == (False, None)
    assert parse_restore_header('ongoing-request="true"', now) == (True, None)
    assert parse_restore_header('ongoing-request="false", expiry-date="Fri, 28 Nov 2025 00:00:00 GMT"',
                                now) == (False, 1_764_288_000_000)
    # A copy whose expiry has passed is gone, as S3 removes it then.
    assert parse_restore_header('ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"',
                                now) == (False, None)
    assert parse_restore_header('ongoing-request="false", expiry-date="not a date"', now) == (False, None)


# ---- the store against moto through the proxy -------------------------------------------
@pytest.fixture
def held_store(restore_proxy):
    proxy, bucket = restore_proxy
    store = S3Store(bucket, "lake", endpoint_url=proxy.url)
    return proxy, bucket, store


def test_a_restore_runs_until_released_then_the_copy_reads_until_it_expires(held_store):
    proxy, bucket, store = held_store
    key = "raw/date=2025-01-01/hour=00/w0-000000000001.parquet"
    store.put(key, b"archived bytes")
    store.set_storage_class(key, "GLACIER")
    info = store.info(key)
    assert (info.archived, info.readable, info.restore_ongoing) == (True, False, False)
    with pytest.raises(ObjectArchived):
        store.get(key)

    assert store.restore(key, keep_s=3, speed="bulk") is RestoreRequest.STARTED
    assert proxy.restore_days[f"{bucket}/lake/{key}"] == [1]  # S3 counts whole days: 3 s is 1 day
    info = store.info(key)
    assert (info.restore_ongoing, info.readable) == (True, False)
    listed = {o.key: o for o in store.objects("raw/")}[key]  # moto's listing has no RestoreStatus: a HEAD
    assert (listed.restore_ongoing, listed.readable) == (True, False)
    with pytest.raises(ObjectArchived):
        store.get(key)
    # S3 refuses a second request while one runs; the store says so instead of failing.
    assert store.restore(key, keep_s=3, speed="bulk") is RestoreRequest.IN_PROGRESS

    assert proxy.release() == 1
    info = store.info(key)
    assert info.restored and info.readable and not info.restore_ongoing
    assert info.restore_expiry_ms is not None and info.restore_expiry_ms > time.time() * 1000
    assert store.get(key) == b"archived bytes"
    assert {o.key: o for o in store.objects("raw/")}[key].restored
    # Asked again while the copy is readable: S3 answers 200 and renews its days.
    assert store.restore(key, keep_s=36 * 3600, speed="standard") is RestoreRequest.RESTORED
    assert proxy.restore_days[f"{bucket}/lake/{key}"] == [1, 1, 2]

    assert proxy.expire(bucket=bucket) == 1
    info = store.info(key)
    assert (info.readable, info.restore_ongoing, info.restore_expiry_ms) == (False, False, None)
    with pytest.raises(ObjectArchived):
        store.get(key)


def test_refusals_are_answers(held_store):
    proxy, bucket, store = held_store
    store.put("raw/standard.parquet", b"x")
    assert store.restore("raw/standard.parquet", keep_s=86400, speed="standard") is RestoreRequest.NOT_ARCHIVED
    with pytest.raises(ObjectMissing):
        store.restore("raw/gone.parquet", keep_s=86400, speed="standard")
    with pytest.raises(ObjectMissing):
        store.info("raw/gone.parquet")
    with pytest.raises(ValueError):
        store.restore("raw/standard.parquet", keep_s=86400, speed="fast")


def test_a_restored_copy_past_its_expiry_date_counts_as_gone(held_store):
    proxy, bucket, store = held_store
    store.put("raw/a.parquet", b"x")
    store.set_storage_class("raw/a.parquet", "DEEP_ARCHIVE")
    store.restore("raw/a.parquet", keep_s=86400, speed="bulk")
    proxy.release()
    assert store.info("raw/a.parquet").restored
    # S3 removes the copy at its expiry date: a store whose clock is past it does not count on it.
    late = S3Store(bucket, "lake", endpoint_url=proxy.url, clock=ManualClock(int(time.time() * 1000) + 3 * 86_400_000))
    assert not late.info("raw/a.parquet").readable
    assert not {o.key: o for o in late.objects("raw/")}["raw/a.parquet"].readable
