"""One contract, two stores: every test runs on a local directory and on S3 (moto's server)."""

from __future__ import annotations

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.records import DEEP_ARCHIVE, GLACIER, STANDARD
from tiers.store import (
    LocalStore,
    ObjectArchived,
    ObjectMissing,
    S3Store,
    open_store,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "lake/v1", endpoint_url=endpoint)


def test_put_then_get_returns_the_bytes(store):
    store.put("raw/date=2025-11-24/hour=08/a.parquet", b"abc")
    assert store.get("raw/date=2025-11-24/hour=08/a.parquet") == b"abc"
    assert store.exists("raw/date=2025-11-24/hour=08/a.parquet")


def test_put_again_replaces(store):
    store.put("k/x", b"first")
    store.put("k/x", b"second, longer")
    assert store.get("k/x") == b"second, longer"
    assert store.list("k/") == [("k/x", len(b"second, longer"))]


def test_missing_objects(store):
    assert not store.exists("no/such")
    with pytest.raises(ObjectMissing):
        store.get("no/such")
    store.delete("no/such")  # deleting what is gone is not an error: moves are re-run


def test_delete_removes(store):
    store.put("a/1", b"1")
    store.delete("a/1")
    assert not store.exists("a/1") and store.list("a/") == []


def test_list_is_sorted_with_sizes_and_stays_under_the_prefix(store):
    for key in ("raw/b/2", "raw/a/1", "raw/a/10", "rawx/1", "quarantine/1"):
        store.put(key, key.encode())
    assert store.list("raw/") == [("raw/a/1", 7), ("raw/a/10", 8), ("raw/b/2", 7)]
    assert [k for k, _ in store.list("raw/a/1")] == ["raw/a/1", "raw/a/10"]  # a partial level
    assert len(store.list("")) == 5


def test_objects_carry_size_time_and_class(store):
    store.put("raw/x", b"12345")
    (info,) = store.objects("raw/")
    assert (info.key, info.size, info.storage_class, info.archived) == ("raw/x", 5, STANDARD, False)
    assert info.last_modified_ms > 1_600_000_000_000


def test_an_archived_object_is_listed_but_cannot_be_read(store):
    for key in ("raw/old", "raw/older", "raw/new"):
        store.put(key, key.encode())
    store.set_storage_class("raw/old", GLACIER)
    store.set_storage_class("raw/older", DEEP_ARCHIVE)
    classes = {o.key: o.storage_class for o in store.objects("raw/")}
    assert classes == {"raw/old": GLACIER, "raw/older": DEEP_ARCHIVE, "raw/new": STANDARD}
    assert {o.key: o.archived for o in store.objects("raw/")} == {
        "raw/old": True, "raw/older": True, "raw/new": False}
    for key in ("raw/old", "raw/older"):
        with pytest.raises(ObjectArchived):
            store.get(key)
    assert store.get("raw/new") == b"raw/new"
    store.put("raw/old", b"rewritten")  # a new object starts in STANDARD again
    assert store.get("raw/old") == b"rewritten"
    store.delete("raw/older")
    assert [o.key for o in store.objects("raw/")] == ["raw/new", "raw/old"]


def test_bad_keys_are_refused(store):
    for key in ("/abs", "a/../b", ""):
        with pytest.raises(ValueError):
            store.put(key, b"x")


def test_arrow_filesystem_reads_what_was_put(store):
    table = pa.table({"machine": ["m"], "value": [1.5]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.put("raw/t.parquet", sink.getvalue().to_pybytes())
    fs, root = store.arrow_filesystem()
    assert pq.read_table(f"{root}/raw/t.parquet", filesystem=fs).equals(table)


def test_open_store_by_url(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    assert isinstance(open_store((tmp_path / "l").as_uri()), LocalStore)
    s3 = open_store(f"s3://{bucket}/some/prefix", endpoint_url=endpoint)
    assert isinstance(s3, S3Store) and s3.url == f"s3://{bucket}/some/prefix"
    s3.put("k", b"v")
    raw = boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=bucket, Key="some/prefix/k")
    assert raw["Body"].read() == b"v"


def test_every_s3_put_is_encrypted(s3_bucket):
    endpoint, bucket = s3_bucket
    S3Store(bucket, "p", endpoint_url=endpoint).put("k", b"v")
    head = boto3.client("s3", endpoint_url=endpoint).head_object(Bucket=bucket, Key="p/k")
    assert head["ServerSideEncryption"] == "AES256"
