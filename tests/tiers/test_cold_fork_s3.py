"""A seal in a forked child on S3 builds no Arrow S3 file system (tiers.cold.ColdLake.after_fork):
Arrow's S3 client lock, held by another thread of the parent at the fork, stays locked in the
child, and building one there hung for ever. The child's check against the hour's other files
goes through the store's own client, and still drops readings stored already.

The child is forked as the seal forks it (`fabtier.forked.call_in_fork`): a bare os.fork let
the child's garbage collector finalise the parent's garbage (of the busy threads' S3 reads),
and in CI the child crashed (SIGSEGV, in a collection while building its boto3 client) about
one fork in a hundred."""

from __future__ import annotations

import threading
import time

import pyarrow as pa

from fabtier import forked
from tiers.catalog import CatalogedStore
from tiers.cold import ColdLake
from tiers.store import S3Store
from tiers.unsealed import CONTEXT_SCHEMA, QUARANTINE_SCHEMA, READINGS_SCHEMA, SegmentTables

HOUR = 3_600_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR


def _tables(ts: list[int]) -> SegmentTables:
    readings = pa.table({"machine": ["m1"] * len(ts), "sensor": ["s1"] * len(ts),
                         "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                         "value": [1.5] * len(ts)}, schema=READINGS_SCHEMA)
    return SegmentTables(fresh=readings, late=READINGS_SCHEMA.empty_table(),
                         quarantine=QUARANTINE_SCHEMA.empty_table(), context=CONTEXT_SCHEMA.empty_table())


def test_a_seal_in_a_forked_child_beside_busy_s3_threads_finishes_and_drops_stored_readings(s3_bucket):
    endpoint, bucket = s3_bucket
    store = CatalogedStore(S3Store(bucket, "lake", endpoint_url=endpoint))
    store.build()
    lake = ColdLake(store, writer_id="w0")
    lake.write_segment(1, _tables([T0 + 1, T0 + 2, T0 + 3]), source="test")
    stop = threading.Event()

    def busy() -> None:  # the parent's other threads: Arrow S3 reads all the time
        while not stop.is_set():
            lake.read_raw()

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        outcomes = []
        for attempt in range(5):  # several forks, each while the threads are inside S3 calls
            time.sleep(0.05)

            def seal(attempt: int = attempt) -> int:
                lake.after_fork()
                lake.write_segment(2 + attempt, _tables([T0 + 2, T0 + 3, T0 + 10 + attempt]), source="child")
                return attempt

            try:  # as the seal forks (fabtier.sealing): the parent's garbage frozen at the fork
                outcomes.append(forked.call_in_fork(seal, timeout=60))
            except forked.ChildLost as exc:
                outcomes.append(str(exc))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert outcomes == list(range(5))
    rows = sorted(lake.read_raw().column("ts").cast(pa.int64()).to_pylist())
    assert rows == [T0 + 1, T0 + 2, T0 + 3] + [T0 + 10 + a for a in range(5)]
