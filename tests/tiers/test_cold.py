"""The cold lake on both stores: sealing, value encodings, visibility, compaction."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.records import GLACIER
from ingest.codec import ReadingBatch
from tiers import compaction, layout
from tiers import parquetformat as fmt
from tiers.cold import ColdLake, VerifyError
from tiers.store import LocalStore, S3Store
from tiers.unsealed import READINGS_SCHEMA, tables_from_records

HOUR = 3_600_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR  # the start of an hour
H0 = f"{(T0 // HOUR) % 24:02d}"
H1 = f"{(T0 // HOUR + 1) % 24:02d}"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "lake")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "lake", endpoint_url=endpoint)


def tables(*rows):
    """Segment tables from (machine, sensor, ts, value) rows."""
    batches = [ReadingBatch(m, [s], np.zeros(1, np.uint32), np.array([t], np.int64), np.array([v]))
               for m, s, t, v in rows]
    return tables_from_records(batches)


def lake_rows(lake, hidden=frozenset()):
    table = lake.read_raw(hidden_segments=hidden)
    return sorted(zip(table.column("machine").to_pylist(), table.column("sensor").to_pylist(),
                      table.column("ts").cast(pa.int64()).to_pylist(), table.column("value").to_pylist(),
                      strict=True))


def names(store, prefix="raw/"):
    return sorted(k.rsplit("/", 1)[-1] for k, _ in store.list(prefix))


def test_segment_is_split_by_hour_and_encoding_sorted_and_deduplicated(store):
    lake = ColdLake(store, writer_id="w0")
    moves = lake.write_segment(1, tables(("b", "s", T0 + 5, 2.5), ("a", "s", T0 + HOUR + 1, 3.0),
                                         ("a", "s", T0 + 1, 1.25), ("b", "s", T0 + 5, 9.0),
                                         ("a", "t", T0 + 2, 0.1 + 0.2)), source="test")
    assert sorted(m.target.split("/raw/")[1] for m in moves) == [
        f"date=2025-11-24/hour={H0}/w0-000000000001.d1.parquet",   # b/s: 2.5
        f"date=2025-11-24/hour={H0}/w0-000000000001.d2.parquet",   # a/s: 1.25
        f"date=2025-11-24/hour={H0}/w0-000000000001.f64.parquet",  # a/t: 0.30000000000000004
        f"date=2025-11-24/hour={H1}/w0-000000000001.d0.parquet"]   # a/s: 3.0
    assert lake_rows(lake) == [("a", "s", T0 + 1, 1.25), ("a", "s", T0 + HOUR + 1, 3.0),
                               ("a", "t", T0 + 2, 0.1 + 0.2), ("b", "s", T0 + 5, 2.5)]


def test_a_sensor_stays_in_one_file_at_its_finest_resolution(store):
    lake = ColdLake(store, writer_id="w0")
    lake.write_segment(1, tables(("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 1.5), ("a", "s", T0 + 3, 1.25),
                                 ("b", "s", T0 + 1, 7.0)), source="test")
    assert names(store) == ["w0-000000000001.d0.parquet", "w0-000000000001.d2.parquet"]


def test_files_are_read_by_plain_pyarrow_and_duckdb_as_numbers_bit_exact(store, tmp_path):
    import duckdb

    values = [23.51, -0.07, 1e-9, 1234567.891, 0.1 + 0.2, -0.0, 5e-324, 1.7976931348623157e308]
    lake = ColdLake(store, writer_id="w0")
    lake.write_segment(1, tables(*[(f"m{i}", "s", T0 + i, v) for i, v in enumerate(values)]), source="test")
    fs, root = store.arrow_filesystem()
    got = {}
    for key, _ in store.list("raw/"):
        table = pq.read_table(f"{root}/{key}", filesystem=fs, partitioning=None)
        value_type = table.schema.field("value").type
        assert value_type == pa.float64() or pa.types.is_decimal(value_type)
        assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
        local = tmp_path / key.replace("/", "_")
        local.write_bytes(store.get(key))
        con = duckdb.connect()
        (duck_type,) = {t for (t,) in con.execute(f"SELECT typeof(value) FROM '{local}'").fetchall()}
        assert duck_type.startswith("DECIMAL(18,") or duck_type == "DOUBLE"
        for machine, value in con.execute(f"SELECT machine, value::DOUBLE FROM '{local}'").fetchall():
            got[machine] = value
    for i, v in enumerate(values):
        assert np.float64(got[f"m{i}"]).view(np.int64) == np.float64(v).view(np.int64), (i, v, got[f"m{i}"])
    assert [np.float64(v).view(np.int64) for _, _, _, v in lake_rows(lake)] == \
        [np.float64(v).view(np.int64) for v in values]


def test_sealing_a_segment_again_replaces_its_files(store):
    lake = ColdLake(store, writer_id="w0")
    rows = (("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0))
    lake.write_segment(7, tables(*rows), source="test")
    lake.write_segment(7, tables(*rows), source="test")  # a crash came before the log was deleted
    assert lake_rows(lake) == sorted(rows)


def test_a_second_seal_with_other_encodings_leaves_no_stale_file(store):
    lake = ColdLake(store, writer_id="w0")
    lake.write_segment(7, tables(("a", "s", T0 + 1, 1.5)), source="test")
    lake.write_segment(7, tables(("a", "s", T0 + 1, 1.25)), source="test")
    assert names(store) == ["w0-000000000007.d2.parquet"]
    assert lake_rows(lake) == [("a", "s", T0 + 1, 1.25)]


def test_readings_already_in_other_files_of_the_hour_are_not_written_again(store):
    lake = ColdLake(store, writer_id="w0")
    lake.write_segment(1, tables(("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0)), source="test")
    lake.write_segment(2, tables(("a", "s", T0 + 2, 2.0), ("a", "s", T0 + 3, 3.5)), source="test")
    assert lake_rows(lake) == [("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0), ("a", "s", T0 + 3, 3.5)]


def test_a_segment_beside_other_files_of_its_span_is_written_sorted_whole(store):
    # The other file's span overlaps, none of its readings repeats: nothing is dropped, and
    # the file keeps the lake's order (machine, sensor, ts). Rows enough (160,000) for Arrow's
    # join to hand them back in another order than it got them.
    lake = ColdLake(store, writer_id="w0")
    lake.write_segment(1, tables(("a", "s1", T0 + 1, 1.0), ("b", "s1", T0 + 9, 2.0)), source="test")
    rng = np.random.default_rng(3)
    sensors = [f"s{i}" for i in range(100)]
    batches = []
    for machine in "abcd":
        codes = np.repeat(np.arange(100, dtype=np.uint32), 400)
        ts = np.tile(T0 + 2 + 2 * np.arange(400, dtype=np.int64), 100)
        shuffle = rng.permutation(len(ts))
        batches.append(ReadingBatch(machine, sensors, codes[shuffle], ts[shuffle], (ts[shuffle] - T0) + 0.5))
    [move] = lake.write_segment(2, tables_from_records(batches), source="test")
    written = pq.read_table(pa.BufferReader(store.get(move.target.removeprefix(store.url + "/"))))
    keys = list(zip(written.column("machine").to_pylist(), written.column("sensor").to_pylist(),
                    written.column("ts").cast(pa.int64()).to_pylist(), strict=True))
    assert keys == sorted((m, sensors[c], t) for b in batches for m, c, t in
                          zip([b.machine] * len(b), b.sensor_codes.tolist(), b.ts.tolist(), strict=True))
    assert len(lake_rows(lake)) == 160_000 + 2


def test_readings_checked_by_the_ring_are_still_looked_up_in_other_writers_files(store):
    # Another writer (an instance sharing the subscription) may have stored a reading that the
    # broker then delivered here: this writer's ring never saw it.
    ColdLake(store, writer_id="w1").write_segment(
        1, tables(("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0)), source="test")
    lake = ColdLake(store, writer_id="w0")
    checked = dataclasses.replace(tables(("a", "s", T0 + 2, 2.0), ("a", "s", T0 + 3, 3.5)), ring_checked=True)
    lake.write_segment(1, checked, source="test")
    assert lake_rows(lake) == [("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0), ("a", "s", T0 + 3, 3.5)]


def test_a_segment_is_ring_checked_only_when_every_reading_was_verified():
    from tiers.keys import SensorKeys
    from tiers.unsealed import UnsealedData

    keys = SensorKeys()
    unsealed = UnsealedData(keys)
    key_ids = np.array([keys.id_of("a", "s")] * 3, np.int32)
    unsealed.add_readings(1, key_ids, T0 + np.arange(3), np.ones(3), np.ones(3, bool))
    unsealed.add_readings(2, key_ids, T0 + np.arange(3), np.ones(3), np.ones(3, bool))
    unsealed.add_readings(2, key_ids[:1], np.array([T0 - 5]), np.ones(1), np.zeros(1, bool))  # late
    assert not unsealed.sealable([1]).ring_checked  # a ring not warmed from the lake knows nothing of it
    unsealed.ring_knows_lake = True
    assert unsealed.sealable([1]).ring_checked and not unsealed.sealable([2]).ring_checked
    assert not tables(("a", "s", T0, 1.0)).ring_checked  # read back from the log: not checked


def test_files_of_unsealed_segments_are_hidden(store):
    lake = ColdLake(store, writer_id="w0")
    lake.write_segment(1, tables(("a", "s", T0 + 1, 1.0)), source="test")
    lake.write_segment(2, tables(("a", "s", T0 + 2, 2.0)), source="test")
    def file_names(paths):
        return sorted(p.rsplit("/", 1)[-1] for p in paths)

    # The writer's own file of segment 2 is hidden: its rows are still read from its log.
    assert file_names(lake.files("raw", hidden_segments={2})) == ["w0-000000000001.d0.parquet"]
    assert lake_rows(lake, hidden={2}) == [("a", "s", T0 + 1, 1.0)]
    # Another writer's segment 2 is another log: w1's hidden segments never hide w0's files.
    other = ColdLake(store, writer_id="w1")
    assert file_names(other.files("raw", hidden_segments={2})) == ["w0-000000000001.d0.parquet",
                                                                  "w0-000000000002.d0.parquet"]
    assert lake_rows(other, hidden={2}) == [("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0)]


def test_a_statement_over_an_unchanged_lake_reuses_its_datasets_and_a_new_file_is_read(store):
    lake = ColdLake(store, writer_id="w0")
    lake.write_segment(1, tables(("a", "s", T0 + 1, 1.0)), source="test")
    first, again = lake.raw_datasets(), lake.raw_datasets()
    assert [id(d) for d in again] == [id(d) for d in first]  # nothing built (nor freed) again
    assert lake.dataset("context") is lake.dataset("context")
    lake.write_segment(2, tables(("a", "s", T0 + 2, 2.0)), source="test")
    (grown,) = lake.raw_datasets()
    assert grown is not first[0] and len(grown.files) == 2
    assert lake_rows(lake) == [("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0)]
    # Rewritten with other rows (another size): read as it is now.
    lake.write_segment(2, tables(("a", "s", T0 + 2, 2.0), ("a", "s", T0 + 3, 3.0)), source="test")
    assert lake_rows(lake) == [("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0), ("a", "s", T0 + 3, 3.0)]


def test_archived_files_are_not_read(store):
    lake = ColdLake(store, writer_id="w0")
    lake.write_segment(1, tables(("a", "s", T0 + 1, 1.0)), source="test")
    lake.write_segment(2, tables(("a", "s", T0 + HOUR + 1, 2.0)), source="test")
    (old,) = [k for k, _ in store.list(f"raw/date=2025-11-24/hour={H0}/")]
    store.set_storage_class(old, GLACIER)
    assert lake_rows(lake) == [("a", "s", T0 + HOUR + 1, 2.0)]


def test_a_write_that_does_not_read_back_is_refused(tmp_path):
    class LossyStore(LocalStore):
        def get(self, key):
            table = fmt.from_parquet_bytes(super().get(key))
            return fmt.to_parquet_bytes(table.slice(1))

    lake = ColdLake(LossyStore(tmp_path), writer_id="w0")
    with pytest.raises(VerifyError):
        lake.write_segment(1, tables(("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0)), source="test")


def _compact_all(lake, *, hidden=frozenset(), now=T0 + 10 * HOUR, target=1 << 30):
    plan = compaction.plan(lake.lake_files("raw"), writer=lake.writer_id, hidden_segments=set(hidden),
                           now_ms=now, settle_ms=HOUR, target_bytes=target)
    lake.delete_files(plan.garbage)
    moves = []
    for task in plan.tasks:
        moves += lake.compact(task)
        lake.delete_files(task.sources)
    return plan, moves


def test_compaction_merges_an_hours_small_files_into_one_set(store):
    lake = ColdLake(store, writer_id="w0")
    expected = []
    for segment in range(1, 6):
        rows = [("a", "s", T0 + segment * 10 + i, segment + i / 4) for i in range(3)]
        rows.append(("b", "t", T0 + segment, 0.1 * segment))  # not exact at 9 digits: DOUBLE
        lake.write_segment(segment, tables(*rows), source="test")
        expected += rows
    assert len(store.list("raw/")) == 10
    plan, moves = _compact_all(lake)
    assert [(t.lo, t.hi, len(t.sources)) for t in plan.tasks] == [(1, 5, 10)]
    assert names(store) == ["w0.000000000001-000000000005.1of2.d2.parquet",
                            "w0.000000000001-000000000005.2of2.f64.parquet"]
    assert sum(m.rows for m in moves) == len(expected)
    assert lake_rows(lake) == sorted(expected)


def test_compaction_leaves_unsealed_segments_and_unsettled_hours(store):
    lake = ColdLake(store, writer_id="w0")
    for segment in (1, 2, 3, 4):
        lake.write_segment(segment, tables(("a", "s", T0 + segment, 1.0)), source="test")
    lake.write_segment(5, tables(("a", "s", T0 + HOUR + 5, 1.0)), source="test")
    lake.write_segment(6, tables(("a", "s", T0 + HOUR + 6, 1.0)), source="test")
    plan, _ = _compact_all(lake, hidden={3, 7}, now=T0 + 2 * HOUR + 1)
    # segments 1-2 only: 3 is still in the log, and 4 lies beyond it; hour 1 has not settled
    assert [(t.hour, t.lo, t.hi) for t in plan.tasks] == [(H0, 1, 2)]
    assert names(store) == ["w0-000000000003.d0.parquet", "w0-000000000004.d0.parquet",
                            "w0-000000000005.d0.parquet", "w0-000000000006.d0.parquet",
                            "w0.000000000001-000000000002.1of1.d0.parquet"]


def test_compaction_respects_the_target_size_and_merges_late_files_later(store):
    lake = ColdLake(store, writer_id="w0")
    for segment in range(1, 7):
        lake.write_segment(segment, tables(*[("a", "s", T0 + segment * 1000 + i, float(i)) for i in range(50)]),
                           source="test")
    size = store.list("raw/")[0][1]
    plan, _ = _compact_all(lake, target=int(size * 2.5))
    assert [(t.lo, t.hi) for t in plan.tasks] == [(1, 3), (4, 6)]
    lake.write_segment(9, tables(("a", "s", T0 + 7, 0.5)), source="test")  # late data
    plan, _ = _compact_all(lake, target=1 << 30)
    assert [(t.lo, t.hi) for t in plan.tasks] == [(1, 9)]
    assert len(lake_rows(lake)) == 6 * 50 + 1


def test_other_writers_files_are_not_touched(store):
    lake0, lake1 = ColdLake(store, writer_id="w0"), ColdLake(store, writer_id="w1")
    lake0.write_segment(1, tables(("a", "s", T0 + 1, 1.0)), source="test")
    lake0.write_segment(2, tables(("a", "s", T0 + 2, 1.0)), source="test")
    lake1.write_segment(1, tables(("b", "s", T0 + 1, 1.0)), source="test")
    lake1.write_segment(2, tables(("b", "s", T0 + 2, 1.0)), source="test")
    _compact_all(lake0)
    assert names(store) == ["w0.000000000001-000000000002.1of1.d0.parquet",
                            "w1-000000000001.d0.parquet", "w1-000000000002.d0.parquet"]
    assert len(lake_rows(lake1)) == 4


def test_visibility_rules():
    def f(name, t=0, hour=H0, archived=False):
        return layout.parse(f"raw/date=2025-11-24/hour={hour}/{name}", last_modified_ms=t, archived=archived)

    files = [f("w0-000000000001.d2.parquet"), f("w0-000000000002.d2.parquet"), f("w0-000000000003.f64.parquet"),
             f("w0.000000000001-000000000002.1of2.d2.parquet", t=5),  # a set with one part missing
             f("w1-000000000001.d2.parquet"), f("w0-000000000004.d2.parquet")]
    seen = {x.key.rsplit("/", 1)[1] for x in layout.visible(files, writer="w0", hidden_segments={4})}
    assert seen == {"w0-000000000001.d2.parquet", "w0-000000000002.d2.parquet", "w0-000000000003.f64.parquet",
                    "w1-000000000001.d2.parquet"}
    files.append(f("w0.000000000001-000000000002.2of2.f64.parquet", t=6))  # now complete
    files.append(f("w0-000000000002.d1.parquet", t=9))  # newer than the set: a log restarted
    seen = {x.key.rsplit("/", 1)[1] for x in layout.visible(files, writer="w0", hidden_segments={4})}
    assert seen == {"w0.000000000001-000000000002.1of2.d2.parquet", "w0.000000000001-000000000002.2of2.f64.parquet",
                    "w0-000000000002.d1.parquet", "w0-000000000003.f64.parquet", "w1-000000000001.d2.parquet"}
    assert layout.parse("raw/date=2025-11-24/hour=01/notes.txt") is None
    assert layout.segment_of("raw/date=2025-11-24/hour=01/w-0-000000000042.parquet") == ("w-0", 42)
    assert layout.segment_of("raw/date=2025-11-24/hour=01/w0.000000000001-000000000002.1of1.d0.parquet") is None


def test_sealable_rows_equal_a_sort_and_dedup_of_the_same_rows():
    """The integer sort used for sealing gives what sorting the strings gives."""
    from tiers.keys import SensorKeys
    from tiers.unsealed import UnsealedData

    keys = SensorKeys()
    ids = np.array([keys.id_of(m, s) for m in ("b", "a", "c") for s in ("z", "ch1/temp", "a")], np.int32)
    rng = np.random.default_rng(3)
    for in_order in (True, False):
        unsealed = UnsealedData(keys)
        key_ids = rng.choice(ids, 5000).astype(np.int32)
        ts = T0 + (np.arange(5000) // 7 if in_order else rng.integers(0, 900, 5000))  # repeats as well
        unsealed.add_readings(1, key_ids, ts, rng.random(5000), np.ones(5000, bool))
        sealable = unsealed.sealable([1])
        assert sealable.presorted
        # names come dictionary-encoded for the Parquet writer; the rows are the same
        assert sealable.readings.cast(READINGS_SCHEMA).equals(
            fmt.sort_dedup(unsealed.tables([1]).readings.select(READINGS_SCHEMA.names).cast(READINGS_SCHEMA)))


@pytest.mark.parametrize("keys", [3, 1 << 16, (1 << 16) + 1, 100_000, 1 << 32, (1 << 32) + 5])
def test_the_sealing_order_is_numpys_stable_order(keys):
    from tiers.unsealed import _stable_order

    rng = np.random.default_rng(keys % 1000)
    rank = rng.integers(0, keys, 20_000).astype(np.int64)
    rank[::7] = rank[0]  # many repeats: stability matters
    assert np.array_equal(_stable_order(rank, keys), np.argsort(rank, kind="stable"))


def test_unsealed_rows_merge_with_rows_read_back_from_the_log():
    """SQL joins in-memory rows (dictionary-coded names) with segments that are only on
    disk (plain names, after a failed seal at start): one table, same rows."""
    from tiers.keys import SensorKeys
    from tiers.unsealed import UnsealedData, merge_tables

    keys = SensorKeys()
    unsealed = UnsealedData(keys)
    ids = np.array([keys.id_of("etch-01", "ch1/temp"), keys.id_of("cvd-01", "rf")], np.int32)
    unsealed.add_readings(1, ids, np.array([T0, T0 + 1]), np.array([1.5, 2.5]), np.ones(2, bool))
    on_disk = tables_from_records([ReadingBatch("etch-01", ["ch1/temp"], np.zeros(1, np.int32),
                                                np.array([T0 + 5]), np.array([3.5]), None)])
    merged = merge_tables(unsealed.tables([1]), on_disk)
    rows = merged.readings.cast(READINGS_SCHEMA).to_pylist()
    assert sorted((r["machine"], r["sensor"], r["value"]) for r in rows) == [
        ("cvd-01", "rf", 2.5), ("etch-01", "ch1/temp", 1.5), ("etch-01", "ch1/temp", 3.5)]
