"""Restores on the local store (simulated as S3 does them, timed by a ManualClock), and what
the lake's readers see of a restored object on both stores: an ordinary file of its hour
while its copy lasts, read once, and left out again when the copy expires."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from core.clock import ManualClock
from core.records import DEEP_ARCHIVE, GLACIER, RestoreRequest
from core.settings import RetrievalSettings
from ingest.codec import ReadingBatch
from tiers.cold import ColdLake
from tiers.store import LocalStore, ObjectArchived, ObjectMissing, S3Store, StoreError
from tiers.unsealed import tables_from_records

HOUR = 3_600_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR
TIMES = RetrievalSettings(local_glacier_expedited=2.0, local_glacier_standard=20.0, local_glacier_bulk=60.0,
                          local_deep_archive_standard=30.0, local_deep_archive_bulk=90.0)


def _store(tmp_path, clock):
    return LocalStore(tmp_path / "lake", clock=clock, restore_times=TIMES.local_restore_seconds)


def test_a_local_restore_takes_its_time_then_reads_for_the_time_kept(tmp_path):
    clock = ManualClock(T0)
    store = _store(tmp_path, clock)
    store.put("raw/a.parquet", b"old readings")
    store.set_storage_class("raw/a.parquet", GLACIER)
    with pytest.raises(ObjectArchived):
        store.get("raw/a.parquet")

    assert store.restore("raw/a.parquet", keep_s=100, speed="standard") is RestoreRequest.STARTED
    info = store.info("raw/a.parquet")
    assert (info.restore_ongoing, info.readable) == (True, False)
    assert store.restore("raw/a.parquet", keep_s=100, speed="expedited") is RestoreRequest.IN_PROGRESS
    clock.advance(19.9)
    with pytest.raises(ObjectArchived):
        store.get("raw/a.parquet")
    clock.advance(0.1)  # 20 s: GLACIER at standard speed in this configuration
    assert store.get("raw/a.parquet") == b"old readings"
    listed = store.objects("raw/")[0]
    assert listed.restored and listed.restore_expiry_ms == T0 + 120_000 and listed.storage_class == GLACIER

    # A new store on the same directory (a restart) sees the same: the record is durable.
    again = _store(tmp_path, clock)
    assert again.info("raw/a.parquet").restored
    assert json.loads((tmp_path / "lake" / ".restores.json").read_text())["raw/a.parquet"]["speed"] == "standard"

    clock.advance(99)
    assert store.get("raw/a.parquet") == b"old readings"
    clock.advance(1)  # kept 100 s after it was ready
    with pytest.raises(ObjectArchived):
        store.get("raw/a.parquet")
    assert not store.info("raw/a.parquet").readable and not store.info("raw/a.parquet").restore_ongoing

    # Restored again, and renewed while readable (as S3 does: from now on, for the days asked).
    assert store.restore("raw/a.parquet", keep_s=100, speed="expedited") is RestoreRequest.STARTED
    clock.advance(2)
    assert store.restore("raw/a.parquet", keep_s=500, speed="expedited") is RestoreRequest.RESTORED
    assert store.info("raw/a.parquet").restore_expiry_ms == clock.now_ms() + 500_000


def test_local_refusals_and_records(tmp_path):
    clock = ManualClock(T0)
    store = _store(tmp_path, clock)
    with pytest.raises(ObjectMissing):
        store.restore("raw/missing.parquet", keep_s=1, speed="bulk")
    with pytest.raises(ObjectMissing):
        store.info("raw/missing.parquet")
    store.put("raw/s.parquet", b"x")
    assert store.restore("raw/s.parquet", keep_s=1, speed="bulk") is RestoreRequest.NOT_ARCHIVED
    store.put("raw/d.parquet", b"x")
    store.set_storage_class("raw/d.parquet", DEEP_ARCHIVE)
    with pytest.raises(StoreError, match="cannot be restored at expedited"):
        store.restore("raw/d.parquet", keep_s=1, speed="expedited")
    assert store.restore("raw/d.parquet", keep_s=1, speed="bulk") is RestoreRequest.STARTED
    # The record is beside the classes, hidden from listings like them.
    assert [o.key for o in store.objects("")] == ["raw/d.parquet", "raw/s.parquet"]
    # Deleting (the lifecycle's expiry) forgets the restore; so does writing a new object.
    store.delete("raw/d.parquet")
    assert "raw/d.parquet" not in json.loads((tmp_path / "lake" / ".restores.json").read_text())
    # The defaults are S3's typical times (upper ends); DEEP_ARCHIVE has no expedited.
    defaults = LocalStore(tmp_path / "other").restore_times
    assert defaults(GLACIER, "expedited") == 300 and defaults(GLACIER, "standard") == 5 * 3600
    assert defaults(DEEP_ARCHIVE, "bulk") == 48 * 3600 and defaults(DEEP_ARCHIVE, "expedited") is None


def _tables(*rows):
    batches = [ReadingBatch(m, [s], np.zeros(1, np.uint32), np.array([t], np.int64), np.array([v]))
               for m, s, t, v in rows]
    return tables_from_records(batches)


def _rows(lake):
    table = lake.read_raw()
    return sorted(zip(table.column("machine").to_pylist(), table.column("ts").cast(pa.int64()).to_pylist(),
                      strict=True))


@pytest.fixture(params=["local", "s3"])
def lake_and_release(request, tmp_path):
    """A lake on either store, and a function that completes the restores asked so far."""
    if request.param == "local":
        clock = ManualClock(T0)
        store = _store(tmp_path, clock)
        return ColdLake(store, writer_id="w0"), lambda: clock.advance(60), lambda: clock.advance(10_000)
    proxy, bucket = request.getfixturevalue("restore_proxy")
    store = S3Store(bucket, "lake", endpoint_url=proxy.url)
    return ColdLake(store, writer_id="w0"), proxy.release, lambda: proxy.expire(bucket=bucket)


def test_a_restored_object_is_read_once_as_a_file_of_its_hour(lake_and_release):
    lake, release, expire = lake_and_release
    store = lake.store
    lake.write_segment(1, _tables(("a", "s", T0 + 1, 1.5), ("b", "s", T0 + 2, 2.5)), source="test")
    lake.write_segment(2, _tables(("a", "s", T0 + HOUR + 1, 3.5)), source="test")
    old = [f.key for f in lake.lake_files("raw") if f"hour={(T0 // HOUR) % 24:02d}" in f.key]
    for key in old:
        store.set_storage_class(key, GLACIER)
    assert _rows(lake) == [("a", T0 + HOUR + 1)]

    for key in old:
        assert store.restore(key, keep_s=1000, speed="bulk") is RestoreRequest.STARTED
    files = {f.key: f for f in lake.lake_files("raw")}
    assert all(files[k].restoring and not files[k].readable for k in old)
    assert _rows(lake) == [("a", T0 + HOUR + 1)]

    release()
    assert all(f.restored and f.readable for f in lake.lake_files("raw") if f.key in old)
    assert _rows(lake) == [("a", T0 + 1), ("a", T0 + HOUR + 1), ("b", T0 + 2)]
    # A late reading already in the restored copy is stored once: sealing checks it too.
    lake.write_segment(3, _tables(("a", "s", T0 + 1, 1.5), ("c", "s", T0 + 3, 4.5)), source="test")
    assert _rows(lake) == [("a", T0 + 1), ("a", T0 + HOUR + 1), ("b", T0 + 2), ("c", T0 + 3)]

    expire()
    assert _rows(lake) == [("a", T0 + HOUR + 1), ("c", T0 + 3)]
