"""A rollup never replaces a minute with one computed from part of its data: when a raw file
that may hold readings of the minute (its hour's files) is archived, the minute stays as it
was, and the run says so (report and a WARNING)."""

from __future__ import annotations

import json
import logging

import pytest

from analytics.session import run_sql
from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from lifecycle.scheduler import JobRunner
from tests.conftest import make_settings

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR
NOW = T0 + 2 * HOUR


@pytest.fixture(params=["local", "s3"])
def settings(request, tmp_path):
    cold = {"seal_in_child": False}
    if request.param == "s3":
        endpoint, bucket = request.getfixturevalue("s3_bucket")
        cold.update(store=f"s3://{bucket}/lake", endpoint_url=endpoint)
    return make_settings(tmp_path, None, cold=cold)


def _publish(pipeline, sensor: str, ts: list[int], values: list[float]) -> None:
    pipeline.process([("fab/etch-01", json.dumps({"ts": ts, "sensor": [sensor] * len(ts), "v": values}).encode(), 0, 0)])
    pipeline.wal.commit()
    pipeline.seal()


def _minutes(pipeline) -> dict:
    table = run_sql(pipeline.sql_sources(), "SELECT sensor, epoch_ms(minute) AS m, n, max FROM readings_1m")
    return {(s, m): (n, mx) for s, m, n, mx in zip(*(table.column(c).to_pylist() for c in ("sensor", "m", "n", "max")),
                                                    strict=True)}


def test_a_minute_with_archived_raw_files_is_not_replaced(settings, caplog):
    pipeline = Pipeline(settings, clock=ManualClock(NOW))
    pipeline.open(warm=False)
    runner = JobRunner(pipeline)
    # Four readings of the first minute of hour 0, and one of hour 1
    _publish(pipeline, "temp", [T0 + i * 10_000 for i in range(4)], [20.0, 21.0, 22.0, 23.0])
    _publish(pipeline, "temp", [T0 + HOUR], [30.0])
    assert runner.run("rollup")["minutes"] == 2
    assert _minutes(pipeline) == {("temp", T0): (4, 23.0), ("temp", T0 + HOUR): (1, 30.0)}

    # Hour 0's raw files go to Glacier (as the lifecycle does once glacier_after has passed)
    store = pipeline.lake.store
    archived = [o.key for o in store.objects(f"raw/date={_day(T0)}/hour={_hour(T0)}/")]
    assert archived
    for key in archived:
        store.set_storage_class(key, "GLACIER")

    # Late readings of both minutes, and of a new minute of hour 0
    _publish(pipeline, "temp", [T0 + 45_000, T0 + HOUR + 5_000, T0 + MINUTE], [99.0, 31.0, 50.0])
    with caplog.at_level(logging.WARNING, logger="fabtier.lifecycle"):
        report = runner.run("rollup")
    # Hour 0's minutes keep what they had; hour 1's minute is recomputed from all its readings
    assert _minutes(pipeline) == {("temp", T0): (4, 23.0), ("temp", T0 + HOUR): (2, 31.0)}
    assert report["skipped_archived"] == 2 and report["minutes"] == 1 and "error" not in report
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 minute(s)" in warnings[0] and f"{len(archived)} archived raw file(s)" in warnings[0]
    pipeline.close_offline()


def _day(ms: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")


def _hour(ms: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%H")
