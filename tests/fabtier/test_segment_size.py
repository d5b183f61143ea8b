"""The log's active segment is closed once it holds `segment_readings` readings (at most one
micro-batch more), so that a seal child, which needs memory in proportion to the segment it
seals, stays bounded when seals fall behind; every reading is sealed once all the same."""

from __future__ import annotations

import json

from analytics.session import run_sql
from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from lifecycle.scheduler import runner_for
from tests.conftest import make_settings

NOW = 1_764_000_000_000
BATCH = 40


def test_a_full_segment_is_closed_between_micro_batches_and_each_is_sealed_once(tmp_path):
    pipeline = Pipeline(make_settings(tmp_path, None), clock=ManualClock(NOW))
    pipeline.open(warm=True)
    try:
        pipeline.ingestor.segment_readings = 100
        first = pipeline.wal.segment_of_next_append
        expected = set()
        for b in range(25):  # 1,000 readings, one 40-reading message per micro-batch
            ts = [NOW - 60_000 + b * BATCH + i for i in range(BATCH)]
            sensors = [f"s{i % 4}" for i in range(BATCH)]
            expected.update(("etch-01", s, t) for s, t in zip(sensors, ts, strict=True))
            pipeline.process([("fab/etch-01", json.dumps({"ts": ts, "sensor": sensors,
                                                           "v": [0.5] * BATCH}).encode(), 0, 0)])
        closed = [s for s in pipeline.wal.segments() if s != pipeline.wal.active]
        sizes = [pipeline.unsealed.rows_of(s) for s in closed]
        # Closed after the batch that reached 100: 120 readings each (3 batches), 8 of them.
        assert closed == list(range(first, first + 8)) and sizes == [120] * 8
        assert pipeline.unsealed.rows_of(pipeline.wal.active) == 40
        assert "error" not in runner_for(pipeline).run("seal")
        raw = run_sql(pipeline.sql_sources(), "SELECT machine, sensor, epoch_ms(ts) AS ms FROM readings")
        rows = list(zip(*(raw.column(c).to_pylist() for c in ("machine", "sensor", "ms")), strict=True))
        assert len(rows) == len(set(rows)) and set(rows) == expected
        files = [k for k, _ in pipeline.lake.store.list("raw/") if k.endswith(".parquet")]
        assert len(files) == 9  # one per segment, the active one included (the seal closes it)
    finally:
        pipeline.close_offline()
