"""`fabtier tiers` counts a restored raw object once: as restored, not also as cold or frozen."""

import pyarrow as pa
import pyarrow.parquet as pq

from core.clock import ManualClock
from tiers.inventory import raw_rows
from tiers.store import LocalStore

T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z


def _raw_file(store: LocalStore, hour: int, n: int) -> str:
    key = f"raw/date=2025-11-24/hour={hour:02d}/w0-{hour:012d}.f64.parquet"
    table = pa.table({"machine": ["m"] * n, "sensor": ["s"] * n,
                      "ts": pa.array([T0 + i for i in range(n)], pa.timestamp("ms", tz="UTC")),
                      "value": [1.0] * n})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.put(key, sink.getvalue().to_pybytes())
    return key


def test_a_restored_object_is_counted_once_as_restored(tmp_path):
    clock = ManualClock(T0)
    store = LocalStore(tmp_path / "lake", clock=clock, restore_times=lambda cls, speed: 60.0)
    _raw_file(store, 15, 3)
    archived = _raw_file(store, 16, 5)
    restored = _raw_file(store, 17, 7)
    store.set_storage_class(archived, "GLACIER")
    store.set_storage_class(restored, "GLACIER")
    store.restore(restored, keep_s=3600, speed="standard")
    clock.advance(61)  # the restore is done, the copy readable for an hour
    rows = {r.tier: r.rows for r in raw_rows(store, store.url)}
    assert rows == {"cold raw": 3, "restored raw (GLACIER)": 7, "frozen raw (GLACIER, recorded locally)": 5}
