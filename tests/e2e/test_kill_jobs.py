"""Kills in the middle of the jobs that had no crash test yet (issue 14).

Already crash-tested elsewhere: ingest (kill -9 mid-stream, tests/e2e/test_crash_recovery.py;
a torn log append, tests/ingest/test_wal.py), sealing in this process and in a forked child,
compaction and the local lifecycle at every step (tests/lifecycle/test_crash_in_move.py), a
seal child that dies, hangs or stalls (tests/e2e/test_failures.py,
tests/fabtier/test_stalled_seal.py), the scheduler (tests/e2e/test_lifecycle_catch_up.py),
retrieval after its job is written and through a kill -9 (tests/lifecycle/test_retrieval_jobs.py,
tests/e2e/test_retrieval_s3.py). Here:

- age-out, at every step: before each agg_1m file is written, between a file and its audit
  record, in the middle of that record (a torn line), and between the record and the removal
  of the warm rows; the answer of `readings_1m` stays right throughout and the next run
  finishes the move;
- `fabtier run` killed with SIGKILL at seeded random moments while a stream arrives and seal
  (in a child), compaction and the lifecycle run every second: whatever job each kill hits,
  after the restarts every reading is in `readings` once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from analytics.session import run_sql
from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from fabtier.reader import query
from lifecycle import warmjobs
from lifecycle.scheduler import runner_for
from tests.conftest import make_settings, mosquitto_pub, start_fabtier_run, wait_for, wait_ready
from tests.lifecycle.test_crash_in_move import Crash, CrashingStore
from tests.lifecycle.test_rollup_property import DIRECT, ROLLED, _same

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# Readings from 30 minutes before a UTC midnight to 30 minutes after: age-out writes two
# agg_1m files, one per day.
MIDNIGHT = 1_800_000_000_000 - 1_800_000_000_000 % DAY
T0 = MIDNIGHT - 30 * MINUTE
NOW = T0 + 2 * HOUR
RETENTION = 30 * MINUTE  # every minute of the readings is older


# ---- age-out ---------------------------------------------------------------------------------
def _settings(path: Path):
    return make_settings(path, None, warm={"retention": "30m"}, ingest={"max_late": "1d"}, hot={"window": "5m"})


def _open(settings) -> Pipeline:
    pipeline = Pipeline(settings, clock=ManualClock(NOW))
    pipeline.open(warm=True)
    return pipeline


def _rolled_up(path: Path) -> tuple[Pipeline, list[dict]]:
    """A pipeline with an hour of readings sealed and rolled up, and the direct aggregation of
    its readings (what `readings_1m` must answer)."""
    pipeline = _open(_settings(path))
    ts = [T0 + i * 7_000 for i in range(60 * 60 // 7)]
    for machine, offset in (("etch-01", 0.0), ("cvd-02", 100.0)):
        body = {"ts": ts * 2, "sensor": ["ch1/temp"] * len(ts) + ["rf/power"] * len(ts),
                "v": [offset + (i % 13) / 4 for i in range(2 * len(ts))]}
        pipeline.process([(f"fab/{machine}", json.dumps(body).encode(), 0, 0)])
    pipeline.wal.commit()
    runner = runner_for(pipeline)
    for job in ("seal", "rollup"):
        assert "error" not in runner.run(job), job
    return pipeline, run_sql(pipeline.sql_sources(), DIRECT).to_pylist()


def _age_out(pipeline: Pipeline, store=None) -> warmjobs.AgeOutReport:
    return warmjobs.age_out(store=store or pipeline.lake.store, warm=pipeline.warm, audit=pipeline.audit,
                            writer_id=pipeline.settings.cold.writer_id, cutoff_ms=NOW - RETENTION, at_ms=NOW)


def _crash_on_call(target, name: str, at: int, patch: pytest.MonkeyPatch, torn: bytes | None = None) -> None:
    """`target.name` raises Crash on its `at`-th call (after writing `torn` to the audit file)."""
    real, calls = getattr(target, name), [0]

    def crashing(*args, **kwargs):
        if calls[0] == at:
            if torn is not None:
                with open(target.path, "ab") as handle:
                    handle.write(torn)
            raise Crash(f"crash in {name} #{at}")
        calls[0] += 1
        return real(*args, **kwargs)
    patch.setattr(target, name, crashing)


def test_a_crash_at_every_step_of_age_out(tmp_path):
    clean, direct = _rolled_up(tmp_path / "clean")
    report = _age_out(clean)
    files = sorted(k for k, _ in clean.lake.store.list("agg_1m/"))
    assert report.files == len(files) == 2 and report.minutes == len(direct) and report.kept == 0
    assert clean.warm.minutes_before(NOW - RETENTION).num_rows == 0
    _same(run_sql(clean.sql_sources(), ROLLED).to_pylist(), direct)
    clean.close_offline()

    cases = ([("write", n) for n in range(report.files)] + [("audit", n) for n in range(report.files)]
             + [("torn audit", n) for n in range(report.files)] + [("warm delete", n) for n in range(report.files)])
    for where, at in cases:
        run = tmp_path / f"{where.replace(' ', '-')}-{at}"
        pipeline, direct = _rolled_up(run)
        store = pipeline.lake.store
        with pytest.MonkeyPatch.context() as patch:
            if where == "write":
                store = CrashingStore(store, crash_at=at)
            elif where == "audit":
                _crash_on_call(pipeline.audit, "record", at, patch)
            elif where == "torn audit":
                _crash_on_call(pipeline.audit, "record", at, patch,
                               torn=b'{"at": 1, "job": "age_out", "what": "agg_1m", "sou')
            else:
                _crash_on_call(pipeline.warm, "delete_unchanged", at, patch)
            with pytest.raises(Crash):
                _age_out(pipeline, store)
        pipeline.close_offline()  # what survives a kill: the lake, the audit file, the warm store's commits
        crashed = f"after a crash {where} #{at}"
        restarted = _open(_settings(run))
        # Every minute once, with its value: from the warm store, from agg_1m, or (moved
        # but not yet removed from the warm store) the warm row, which equals the copy.
        _same(run_sql(restarted.sql_sources(), ROLLED).to_pylist(), direct)
        assert "error" not in runner_for(restarted).run("seal")  # what `open` left: nothing
        again = _age_out(restarted)  # the next run finishes the move
        assert again.kept == 0, crashed
        assert restarted.warm.minutes_before(NOW - RETENTION).num_rows == 0, crashed
        assert sorted(k for k, _ in restarted.lake.store.list("agg_1m/")) == files, crashed
        _same(run_sql(restarted.sql_sources(), ROLLED).to_pylist(), direct)
        moves = run_sql(restarted.sql_sources(), "SELECT DISTINCT target FROM tier_moves WHERE job = 'age_out'")
        store = restarted.lake.store
        # every file in the audit trail
        assert set(moves.column("target").to_pylist()) == {f"{store.url}/{k}" for k in files}, crashed
        restarted.close_offline()


# ---- kill -9 of `fabtier run` at random moments of every job -------------------------------
SEED = 1409
KILLS = 3


def _config(settings, path: Path) -> Path:
    path.write_text(
        f'data_dir = "{settings.data_dir}"\n'
        f'[broker]\nurl = "{settings.broker.url}"\nclient_id = "{settings.broker.client_id}"\n'
        f'[api]\nport = {settings.api.port}\n'
        # Every job as often as it can run: each kill lands in one of them, or in ingestion.
        '[cold]\nseal_every = "1s"\ncompact_after = "0s"\nseal_in_child = true\n'
        '[warm]\nrollup_every = "1s"\nage_out_every = "1s"\n'
        '[lifecycle]\nrun_every = "1s"\n',
        encoding="utf-8")
    return path


def _count(settings) -> tuple[int, int]:
    table = query(settings, "SELECT count(*) AS n, count(DISTINCT (machine, sensor, ts)) AS d FROM readings")
    return table.column("n")[0].as_py(), table.column("d")[0].as_py()


def test_kill_9_at_random_moments_of_every_job_loses_and_doubles_nothing(broker, tmp_path):
    rng = random.Random(SEED)
    settings = make_settings(tmp_path, broker)
    config = _config(settings, tmp_path / "fabtier.toml")
    now = int(time.time() * 1000)
    batches, expected = [], set()
    for b in range(600):
        ts = [now - 300_000 + b * 40 + j for j in range(40)]
        sensors = [f"s{j % 4}" for j in range(40)]
        expected.update(("etch-11", s, t) for s, t in zip(sensors, ts, strict=True))
        batches.append(json.dumps({"ts": ts, "sensor": sensors, "v": [float(j) / 8 for j in range(40)]}))

    def publish() -> None:
        for i in range(0, len(batches), 25):
            mosquitto_pub(broker, "fab/etch-11", *batches[i:i + 25])
            time.sleep(0.2)
    publisher = threading.Thread(target=publish)
    process = start_fabtier_run(config)
    try:
        wait_ready(settings)
        publisher.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 2.5))  # seeded: the same moments each run, as far as timing repeats
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            process = start_fabtier_run(config)
            wait_ready(settings)
        publisher.join()  # the broker accepted all of it; fabtier was down for parts of it
        wait_for(lambda: _count(settings)[0] >= len(expected), timeout=60, what="every reading after the kills")
        time.sleep(1.0)  # a duplicate redelivery would arrive now
        table = query(settings, "SELECT machine, sensor, epoch_ms(ts) AS ms FROM readings")
        rows = list(zip(*(table.column(c).to_pylist() for c in ("machine", "sensor", "ms")), strict=True))
        assert len(rows) == len(set(rows)) == len(expected)
        assert set(rows) == expected
    finally:
        if publisher.is_alive():
            publisher.join()
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    # After a clean stop everything is sealed into the lake, still once.
    assert _count(settings) == (len(expected), len(expected))
