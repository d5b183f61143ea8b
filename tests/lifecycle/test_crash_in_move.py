"""A crash at every step of every move leaves each reading readable exactly once, and the
next run finishes the move. The crash is an exception injected by a store wrapper before its
n-th write or delete (a BaseException, so nothing on the way catches it, as with kill -9)."""

from __future__ import annotations

import json

import pytest

from analytics.session import run_sql
from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from fabtier.reader import offline_sources
from lifecycle import coldjobs
from tests.conftest import make_settings
from tiers.cold import ColdLake
from tiers.store import LocalStore

HOUR = 3_600_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR
NOW = T0 + HOUR + 600_000  # the pipeline clock: every reading is within max_future and max_late


class Crash(BaseException):
    pass


class CrashingStore:
    """Passes everything to `inner`, but dies before its `crash_at`-th write or delete."""

    def __init__(self, inner, crash_at: int) -> None:
        self.inner, self.crash_at, self.writes = inner, crash_at, 0
        self.url = inner.url

    def _step(self) -> None:
        if self.writes == self.crash_at:
            raise Crash(f"crash before write #{self.writes}")
        self.writes += 1

    def put(self, key, data):
        self._step()
        self.inner.put(key, data)

    def delete(self, key):
        self._step()
        self.inner.delete(key)

    def set_storage_class(self, key, storage_class):
        self._step()
        self.inner.set_storage_class(key, storage_class)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(params=["local", "s3"])
def store_settings(request, tmp_path):
    """Settings for one run in a directory: a local lake in it, or its own prefix of a bucket."""
    s3 = request.getfixturevalue("s3_bucket") if request.param == "s3" else None

    def settings(path):
        # In this process: the tests count and break the store's steps in memory, which a
        # forked sealer would do in its own copy. (The child runs the same move code.)
        cold = {"compact_after": "1h", "seal_every": "1h", "seal_in_child": False}
        if s3 is not None:
            cold.update(store=f"s3://{s3[1]}/{path.name}", endpoint_url=s3[0])
        return make_settings(path, None, cold=cold)
    return settings


def _ingest(pipeline: Pipeline, segments: int) -> dict:
    """Readings of two sensors (DECIMAL and DOUBLE files) over two hours, one segment each."""
    expected = {}
    for s in range(segments):
        ts = [T0 + s * 600_000 + i * 100 for i in range(20)] + [T0 + HOUR + s * 1000 + i for i in range(5)]
        values = [round(20 + s + i * 0.25, 2) for i in range(20)] + [0.1 * (i + 1) for i in range(5)]
        sensors = ["ch1/temp"] * 20 + ["ch1/pressure"] * 5
        pipeline.process([("fab/etch-01", json.dumps({"ts": ts, "sensor": sensors, "v": values}).encode(), 0, 0)])
        pipeline.wal.commit()
        pipeline.seal()
        expected.update({("etch-01", sn, t): v for sn, t, v in zip(sensors, ts, values, strict=True)})
    return expected


def _readings(sources) -> dict:
    table = run_sql(sources, "SELECT machine, sensor, epoch_ms(ts) AS ms, value FROM readings")
    rows = list(zip(table.column("machine").to_pylist(), table.column("sensor").to_pylist(),
                    table.column("ms").to_pylist(), table.column("value").to_pylist(), strict=True))
    keys = [(m, s, t) for m, s, t, _ in rows]
    assert len(keys) == len(set(keys)), "a reading is seen twice"
    return {(m, s, t): v for m, s, t, v in rows}


def _open(settings, clock) -> Pipeline:
    pipeline = Pipeline(settings, clock=clock)
    pipeline.open(warm=False)
    return pipeline


def _die(pipeline: Pipeline) -> None:
    """What the kernel does for a killed process: close files, release locks."""
    pipeline.wal._file.close()
    pipeline._dir_lock.release()


def _count_writes(settings, job) -> int:
    clock = ManualClock(NOW)
    pipeline = _open(settings, clock)
    _ingest(pipeline, 4)
    counting = CrashingStore(pipeline.lake.store, crash_at=-1)
    pipeline.lake = ColdLake(counting, writer_id=settings.cold.writer_id)
    job(pipeline)
    pipeline.close_offline()
    return counting.writes


def test_a_crash_at_every_step_of_compaction(tmp_path, store_settings):
    job = lambda p: coldjobs.compact(p, now_ms=T0 + 5 * HOUR)  # noqa: E731
    steps = _count_writes(store_settings(tmp_path / "count"), job)
    assert steps >= 10  # 2 hours x 2 sets written, 16 sources deleted
    for crash_at in range(steps):
        settings = store_settings(tmp_path / f"run{crash_at}")
        clock = ManualClock(NOW)
        pipeline = _open(settings, clock)
        expected = _ingest(pipeline, 4)
        real = pipeline.lake
        pipeline.lake = ColdLake(CrashingStore(real.store, crash_at), writer_id=real.writer_id)
        with pytest.raises(Crash):
            job(pipeline)
        assert _readings(pipeline.sql_sources()) == expected, f"after a crash before write {crash_at}"
        pipeline.lake = real
        report = job(pipeline)  # the next run finishes the move
        assert _readings(pipeline.sql_sources()) == expected
        names = sorted(k.rsplit("/", 1)[-1] for k, _ in real.store.list("raw/"))
        # one set per hour: hour 0 holds the DECIMAL sensor, hour 1 the DOUBLE one
        assert names == ["w0.000000000002-000000000005.1of1.d2.parquet",
                         "w0.000000000002-000000000005.1of1.f64.parquet"], (crash_at, names, report)
        pipeline.close_offline()


def test_a_crash_at_every_step_of_sealing(tmp_path, store_settings):
    settings = store_settings(tmp_path / "count")
    pipeline = _open(settings, ManualClock(NOW))
    _ingest(pipeline, 1)
    counting = CrashingStore(pipeline.lake.store, crash_at=-1)
    pipeline.lake = ColdLake(counting, writer_id="w0")
    pipeline.process([("fab/etch-01", json.dumps(
        {"ts": [T0 + 1, T0 + HOUR + 1], "sensor": ["a", "b"], "v": [1.5, 0.3]}).encode(), 0, 0)])
    pipeline.wal.commit()
    pipeline.seal()
    steps = counting.writes
    pipeline.close_offline()
    assert steps >= 2
    for crash_at in range(steps):
        settings = store_settings(tmp_path / f"run{crash_at}")
        pipeline = _open(settings, ManualClock(NOW))
        expected = _ingest(pipeline, 1)
        pipeline.lake = ColdLake(CrashingStore(pipeline.lake.store, crash_at), writer_id="w0")
        pipeline.process([("fab/etch-01", json.dumps(
            {"ts": [T0 + 1, T0 + HOUR + 1], "sensor": ["a", "b"], "v": [1.5, 0.3]}).encode(), 0, 0)])
        pipeline.wal.commit()
        expected.update({("etch-01", "a", T0 + 1): 1.5, ("etch-01", "b", T0 + HOUR + 1): 0.3})
        with pytest.raises(Crash):
            pipeline.seal()
        _die(pipeline)
        assert _readings(offline_sources(settings)) == expected, f"after a crash before write {crash_at}"
        restarted = _open(settings, ManualClock(NOW))  # recovery seals what was left
        assert _readings(restarted.sql_sources()) == expected
        assert restarted.wal.segments() == [restarted.wal.active]
        restarted.close_offline()


def test_a_crash_at_every_step_of_the_local_lifecycle(tmp_path):
    settings = make_settings(tmp_path / "count", None, lifecycle={
        "glacier_after": "1d", "deep_archive_after": "2d", "expire_after": "3d", "min_object_size": 0,
        "cost_guard": False})
    pipeline = _open(settings, ManualClock(NOW))
    _ingest(pipeline, 2)
    assert isinstance(pipeline.lake.store, LocalStore)
    objects = pipeline.lake.store.objects("")
    pipeline.close_offline()
    for days, readable in ((1.5, False), (2.5, False), (3.5, False), (0.5, True)):
        for crash_at in range(len(objects) + 1):
            run = tmp_path / f"d{days}-c{crash_at}"
            settings = make_settings(run, None, lifecycle={
                "glacier_after": "1d", "deep_archive_after": "2d", "expire_after": "3d", "min_object_size": 0,
                "cost_guard": False})
            pipeline = _open(settings, ManualClock(NOW))
            expected = _ingest(pipeline, 2)
            store = pipeline.lake.store
            at = max(o.last_modified_ms for o in store.objects(""))
            real = pipeline.lake
            pipeline.lake = ColdLake(CrashingStore(store, crash_at), writer_id="w0")
            try:
                coldjobs.apply_lifecycle_policy(pipeline, now_ms=at + int(days * 86_400_000))
            except Crash:
                pass
            seen = _readings(pipeline.sql_sources())
            # every reading is readable once, or (archived or expired) not at all, never twice
            assert set(seen) <= set(expected) and all(seen[k] == expected[k] for k in seen)
            pipeline.lake = real
            coldjobs.apply_lifecycle_policy(pipeline, now_ms=at + int(days * 86_400_000))
            seen = _readings(pipeline.sql_sources())
            assert (seen == expected) if readable else (seen == {}), (days, crash_at)
            classes = {o.storage_class for o in store.objects("")}
            if days == 1.5:
                assert classes == {"GLACIER"}
            elif days == 2.5:
                assert classes == {"DEEP_ARCHIVE"}
            elif days == 3.5:
                assert store.objects("") == []
            moves = run_sql(pipeline.sql_sources(), "SELECT job, count(DISTINCT target) AS n FROM tier_moves "
                                                    "WHERE job <> 'seal' GROUP BY job")
            audited = dict(zip(moves.column("job").to_pylist(), moves.column("n").to_pylist(), strict=True))
            if days == 1.5:
                assert audited == {"transition": len(objects)}  # every move is in the audit trail
            elif days == 3.5:
                assert audited == {"expire": 1}  # one target, "(expired)", for every object
            pipeline.close_offline()
            if days == 0.5:
                break  # nothing is due: one run is enough
