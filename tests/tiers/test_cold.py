import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from ingest.codec import ReadingBatch
from tiers import parquetformat as fmt
from tiers.cold import ColdLake, VerifyError
from tiers.store import LocalStore
from tiers.unsealed import tables_from_records

HOUR = 3_600_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR  # the start of an hour


def tables(*rows):
    """Segment tables from (machine, sensor, ts, value) rows."""
    batches = [ReadingBatch(m, [s], np.zeros(1, np.uint32), np.array([t], np.int64), np.array([v]))
               for m, s, t, v in rows]
    return tables_from_records(batches)


def lake_rows(lake):
    table = lake.dataset("raw").to_table()
    return sorted(zip(table.column("machine").to_pylist(), table.column("sensor").to_pylist(),
                      table.column("ts").cast(pa.int64()).to_pylist(), table.column("value").to_pylist()))


def test_segment_is_split_by_hour_sorted_and_deduplicated(tmp_path):
    lake = ColdLake(LocalStore(tmp_path), writer_id="w0")
    moves = lake.write_segment(1, tables(("b", "s", T0 + 5, 2.0), ("a", "s", T0 + HOUR + 1, 3.0),
                                         ("a", "s", T0 + 1, 1.0), ("b", "s", T0 + 5, 9.0)), source="test")
    assert sorted(m.target.split("/raw/")[1] for m in moves) == [
        f"date=2025-11-24/hour={(T0 // HOUR) % 24:02d}/w0-000000000001.parquet",
        f"date=2025-11-24/hour={(T0 // HOUR + 1) % 24:02d}/w0-000000000001.parquet"]
    assert lake_rows(lake) == [("a", "s", T0 + 1, 1.0), ("a", "s", T0 + HOUR + 1, 3.0), ("b", "s", T0 + 5, 2.0)]
    first_file = sorted((tmp_path / "raw").rglob("*.parquet"))[0]
    table = ds.dataset(str(first_file)).to_table()
    assert table.column("machine").to_pylist() == ["a", "b"]


def test_sealing_a_segment_again_replaces_its_files(tmp_path):
    lake = ColdLake(LocalStore(tmp_path), writer_id="w0")
    rows = (("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0))
    lake.write_segment(7, tables(*rows), source="test")
    lake.write_segment(7, tables(*rows), source="test")  # a crash came before the log was deleted
    assert lake_rows(lake) == sorted(rows)


def test_readings_already_in_other_files_of_the_hour_are_not_written_again(tmp_path):
    lake = ColdLake(LocalStore(tmp_path), writer_id="w0")
    lake.write_segment(1, tables(("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0)), source="test")
    lake.write_segment(2, tables(("a", "s", T0 + 2, 2.0), ("a", "s", T0 + 3, 3.0)), source="test")
    assert lake_rows(lake) == [("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0), ("a", "s", T0 + 3, 3.0)]


def test_files_of_unsealed_segments_are_hidden(tmp_path):
    lake = ColdLake(LocalStore(tmp_path), writer_id="w0")
    lake.write_segment(1, tables(("a", "s", T0 + 1, 1.0)), source="test")
    lake.write_segment(2, tables(("a", "s", T0 + 2, 2.0)), source="test")
    assert len(lake.files("raw", hidden_segments={2})) == 1
    assert ColdLake(LocalStore(tmp_path), writer_id="w1").files("raw", hidden_segments={2}) != []


def test_a_write_that_does_not_read_back_is_refused(tmp_path):
    class LossyStore(LocalStore):
        def get(self, key):
            table = fmt.from_parquet_bytes(super().get(key))
            return fmt.to_parquet_bytes(table.slice(1))

    lake = ColdLake(LossyStore(tmp_path), writer_id="w0")
    with pytest.raises(VerifyError):
        lake.write_segment(1, tables(("a", "s", T0 + 1, 1.0), ("a", "s", T0 + 2, 2.0)), source="test")


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
        assert sealable.readings.equals(fmt.sort_dedup(unsealed.tables([1]).readings))
