"""tiers.catalog: the lake's manifests never disagree with the files (issue 16), at every step
of every change, after a crash between a change and its manifest, and on S3 where objects
move between classes without fabtier; and a question about the last minutes reads the
catalog of one or two days, never a listing of the lake."""

from __future__ import annotations

import io
import os
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.sources import raw_files
from core.clock import ManualClock
from tiers.catalog import PREFIX, CatalogedStore
from tiers.cold import ColdLake
from tiers.store import LocalStore, S3Store

DAY = 86_400_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % DAY  # a day's start, 2025-11-24


def _parquet(machine: str, ts_ms: list[int]) -> bytes:
    table = pa.table({"machine": pa.array([machine] * len(ts_ms)), "sensor": pa.array(["s"] * len(ts_ms)),
                      "ts": pa.array(ts_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                      "value": pa.array([1.0] * len(ts_ms))})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _key(day: int, hour: int, n: int) -> str:
    import datetime as dt
    name = dt.datetime.fromtimestamp((T0 + day * DAY) / 1000, dt.UTC).strftime("%Y-%m-%d")
    return f"raw/date={name}/hour={hour:02d}/w0-{n:012d}.f64.parquet"


def _truth(store: LocalStore | S3Store, prefix: str) -> list[tuple]:
    return [(o.key, o.size, o.storage_class, o.restore_ongoing, o.restore_expiry_ms)
            for o in store.objects(prefix) if not o.key.startswith(PREFIX)]


def _seen(catalog: CatalogedStore, prefix: str) -> list[tuple]:
    return [(o.key, o.size, o.storage_class, o.restore_ongoing, o.restore_expiry_ms)
            for o in catalog.objects(prefix)]


def _prefixes(store) -> list[str]:
    days = sorted({k.split("/")[1] for k, _ in store.list("raw/")})
    return ["raw/", "agg_1m/"] + [f"raw/{d}/" for d in days] + [f"raw/{d}/hour=01/" for d in days]


operations = st.lists(st.tuples(
    st.sampled_from(["put", "put", "delete", "glacier", "standard", "restore", "flush", "tick"]),
    st.integers(0, 3), st.integers(0, 2), st.integers(1, 6)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_every_listing_agrees_with_the_store_at_every_step(tmp_path_factory, ops):
    """Whatever fabtier does to the lake, in any order, with or without a flush in between,
    a listing through the catalog is the store's own listing (classes and restores too)."""
    root = tmp_path_factory.mktemp("lake")
    clock = ManualClock(T0 + 5 * DAY)
    inner = LocalStore(root, clock=clock, restore_times=lambda cls, speed: 60.0)
    catalog = CatalogedStore(inner)
    catalog.build()
    for op, day, hour, n in ops:
        key = _key(day, hour, n)
        exists = inner.exists(key)
        if op == "put":
            catalog.put(key, _parquet(f"m{n}", [T0 + day * DAY + hour * 3_600_000 + n]))
        elif op == "delete" and exists:
            catalog.delete(key)
        elif op == "glacier" and exists:
            catalog.set_storage_class(key, "GLACIER")
        elif op == "standard" and exists:
            catalog.set_storage_class(key, "STANDARD")
        elif op == "restore" and exists and inner.info(key).archived:
            catalog.restore(key, keep_s=120, speed="standard")
        elif op == "flush":
            catalog.flush()
        elif op == "tick":
            clock.advance(90)  # a restore finishes, a restored copy expires
        for prefix in _prefixes(inner):
            assert _seen(catalog, prefix) == _truth(inner, prefix), (op, prefix)
    catalog.flush()
    fresh = CatalogedStore(LocalStore(root, clock=clock))  # another process reading the lake
    for prefix in _prefixes(inner):
        assert _seen(fresh, prefix) == _truth(inner, prefix), prefix
    # Every day is served from its manifest now: no marker is left.
    assert not [k for k, _ in inner.list(PREFIX) if ".dirty." in k]


def test_a_crash_between_a_change_and_its_manifest_leaves_the_day_listed_live(tmp_path):
    """A writer killed after its put and before its flush leaves its marker: readers list that
    day from the store (never the stale manifest) until a flush removes the dead writer's
    marker and rebuilds the day."""
    inner = LocalStore(tmp_path / "lake")
    catalog = CatalogedStore(inner)
    catalog.build()
    catalog.put(_key(0, 1, 1), _parquet("m1", [T0 + 3_600_000]))
    catalog.flush()
    pid = os.fork()
    if pid == 0:  # the writer: changes the day, then dies before its flush
        try:
            catalog.after_fork()
            catalog.put(_key(0, 1, 2), _parquet("m2", [T0 + 3_600_001]))
            catalog.delete(_key(0, 1, 1))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    reader = CatalogedStore(LocalStore(tmp_path / "lake"))
    assert [o.key for o in reader.objects("raw/")] == [_key(0, 1, 2)]
    assert [k for k, _ in inner.list(PREFIX) if ".dirty." in k]
    assert reader.repair() == 1  # the dead writer's marker: its day rebuilt
    assert not [k for k, _ in inner.list(PREFIX) if ".dirty." in k]
    assert [o.key for o in reader.objects("raw/")] == [_key(0, 1, 2)]


class _CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listed: list[str] = []

    def objects(self, prefix: str):
        self.listed.append(prefix)
        return super().objects(prefix)


def test_the_last_minutes_read_the_catalog_of_their_day_only(tmp_path):
    """`ts >= now - 5 min` on a 30-day lake: the catalog's own folder is listed, no data
    prefix is, and only the newest day's manifest is read; the files come with statistics."""
    counting = _CountingStore(tmp_path / "lake")
    catalog = CatalogedStore(counting)
    catalog.build()
    lake = ColdLake(catalog, writer_id="w0")
    for day in range(30):
        for hour in (0, 12):
            catalog.put(_key(day, hour, day * 24 + hour + 1),
                        _parquet("m1", [T0 + day * DAY + hour * 3_600_000 + i * 1000 for i in range(5)]))
    catalog.flush()
    counting.listed.clear()
    now = T0 + 29 * DAY + 12 * 3_600_000 + 4000
    files = raw_files(lake, (now - 300_000, None))
    assert [f.key for f in files] == [_key(29, 12, 29 * 24 + 13)]
    assert all(p.startswith(PREFIX) for p in counting.listed), counting.listed
    (f,) = files
    assert f.stats is not None and f.stats.rows == 5 and f.stats.machine_min == f.stats.machine_max == "m1"
    assert f.stats.t_min_ms == T0 + 29 * DAY + 12 * 3_600_000 and f.stats.t_max_ms == f.stats.t_min_ms + 4000


def test_a_lake_without_a_catalog_is_listed_as_before(tmp_path):
    inner = LocalStore(tmp_path / "lake")
    inner.put(_key(0, 1, 1), _parquet("m1", [T0 + 3_600_000]))
    catalog = CatalogedStore(inner)
    assert catalog.days("raw") is None  # not built: every listing is the store's
    assert [o.key for o in catalog.objects("raw/")] == [_key(0, 1, 1)]
    assert catalog.build() == 1 and catalog.days("raw") == ["2025-11-24"]


def test_on_s3_what_s3_does_on_its_own_is_seen_at_once_and_statistics_are_kept(s3_bucket):
    """S3's lifecycle rules move objects without fabtier: a day read through the catalog on S3
    is listed, so the class S3 gave is seen at the next read, and the file's statistics from
    the manifest stay attached (same key, size and time)."""
    endpoint, bucket = s3_bucket
    inner = S3Store(bucket, "lake", endpoint_url=endpoint)
    catalog = CatalogedStore(inner)
    catalog.build()
    key = _key(0, 1, 1)
    catalog.put(key, _parquet("m1", [T0 + 3_600_000, T0 + 3_600_009]))
    catalog.flush()
    ((info, stats),) = catalog.objects_with_stats("raw/")
    assert info.storage_class == "STANDARD" and stats is not None and stats.rows == 2
    # S3 moves it behind fabtier's back (moto: a copy onto itself with the new class).
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    full = f"lake/{key}"
    client.copy_object(Bucket=bucket, Key=full, CopySource={"Bucket": bucket, "Key": full},
                       StorageClass="GLACIER", MetadataDirective="COPY")
    ((info, stats),) = catalog.objects_with_stats("raw/")
    assert info.storage_class == "GLACIER"
    moved = inner.info(key)
    if stats is not None:  # kept only while the copy has the time the manifest knows
        assert moved.last_modified_ms == catalog._manifest(
            catalog._view("raw").manifests["2025-11-24"][0]).objects[0][0].last_modified_ms
    assert catalog.days("raw") == ["2025-11-24"]


@pytest.mark.parametrize("kind", ["agg_1m", "context", "alerts", "quarantine"])
def test_every_kind_of_data_is_cataloged(tmp_path, kind):
    inner = LocalStore(tmp_path / "lake")
    catalog = CatalogedStore(inner)
    catalog.build()
    key = f"{kind}/date=2025-11-24/w0-000000000001.parquet"
    catalog.put(key, b"not parquet")  # noted without statistics
    catalog.flush()
    assert catalog.days(kind) == ["2025-11-24"]
    assert [(o.key, o.size) for o in catalog.objects(f"{kind}/")] == [(key, 11)]
    assert [k for k, _ in catalog.list("")] == [key]  # the catalog's own objects are not the lake's


def test_a_cached_view_of_the_catalog_sees_another_process_change(tmp_path):
    """A local store's listing of the catalog is reused while its folder is unchanged; a
    marker or manifest another process writes changes the folder, and the next read lists it."""
    import time

    reader = CatalogedStore(LocalStore(tmp_path / "lake"))
    reader.build()
    writer = CatalogedStore(LocalStore(tmp_path / "lake"))
    writer.put(_key(0, 1, 1), _parquet("m1", [T0 + 3_600_000]))
    writer.flush()
    time.sleep(0.1)  # the folder is older than the clock step: the next view is cached
    assert [o.key for o in reader.objects("raw/")] == [_key(0, 1, 1)]
    assert "raw" in reader._views
    writer.put(_key(1, 2, 2), _parquet("m1", [T0 + 86_400_000 + 7_200_000]))  # a marker, then the file
    assert [o.key for o in reader.objects("raw/")] == [_key(0, 1, 1), _key(1, 2, 2)]
    writer.delete(_key(0, 1, 1))
    writer.flush()
    time.sleep(0.1)
    assert [o.key for o in reader.objects("raw/")] == [_key(1, 2, 2)]
    assert reader.days("raw") == ["2025-11-25"]
