"""The job runner: one run at a time per job, runs recorded, missed periods caught up on start."""

from __future__ import annotations

import json
import logging
import threading

from analytics.session import run_sql
from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from lifecycle import jobs
from lifecycle.scheduler import JobRunner, missed_periods, runner_for
from tests.conftest import make_settings

T0 = 1_764_000_000_000


def test_missed_periods():
    assert missed_periods(None, 60, T0) == 0
    assert missed_periods(T0, 60, T0 + 59_999) == 0
    assert missed_periods(T0, 60, T0 + 600_000) == 10
    assert missed_periods(T0, 0.5, T0 + 1_600) == 3


def test_a_job_never_runs_twice_at_once(tmp_path):
    pipeline = Pipeline(make_settings(tmp_path, None), clock=ManualClock(T0))
    inside, release, overlaps = threading.Event(), threading.Event(), []
    running = [0]

    def slow(ctx):
        running[0] += 1
        overlaps.append(running[0])
        inside.set()
        release.wait(10)
        running[0] -= 1
        return {"job": "slow", "done": 1}

    runner = JobRunner(pipeline, (jobs.Job("slow", slow, lambda s: 60),))
    first = threading.Thread(target=runner.run, args=("slow",), kwargs={"trigger": "schedule"})
    first.start()
    inside.wait(10)
    # A scheduled run that finds the job busy is skipped; a manual one waits for its turn.
    assert runner.run("slow", trigger="schedule") == {"job": "slow", "skipped": "already running"}
    manual = threading.Thread(target=runner.run, args=("slow",))
    manual.start()
    release.set()
    first.join(10)
    manual.join(10)
    assert overlaps == [1, 1]
    outcomes = [(r["trigger"], r["outcome"]) for r in runner.history.table().to_pylist()]
    assert sorted(outcomes) == [("manual", "ok"), ("schedule", "ok"), ("schedule", "skipped")]


def test_a_failing_job_is_recorded_and_does_not_stop_the_others(tmp_path):
    pipeline = Pipeline(make_settings(tmp_path, None), clock=ManualClock(T0))

    def broken(ctx):
        raise OSError("store unreachable")

    runner = JobRunner(pipeline, (jobs.Job("broken", broken, lambda s: 60),
                                  jobs.Job("fine", lambda ctx: {"job": "fine"}, lambda s: 60)))
    reports = runner.run_all()
    assert reports[0] == {"job": "broken", "error": "OSError: store unreachable"}
    assert reports[1] == {"job": "fine"}
    assert runner.history.last_completed("broken") is None and runner.history.last_completed("fine") == T0


def test_missed_runs_are_caught_up_on_start_and_recorded(tmp_path):
    settings = make_settings(tmp_path, None, cold={"seal_every": "1m"},
                             warm={"rollup_every": "1m", "age_out_every": "10m"},
                             lifecycle={"run_every": "10m"}, retrieval={"poll_every": "10m"})
    clock = ManualClock(T0)
    pipeline = Pipeline(settings, clock=clock)
    pipeline.open()
    first = runner_for(pipeline).catch_up()
    assert [r["job"] for r in first] == ["seal", "rollup", "age_out", "compact", "lifecycle", "glue",
                                         "retrieve", "verify"]  # once each
    pipeline.close_offline()

    clock.advance(25 * 60)  # down for 25 minutes
    pipeline = Pipeline(settings, clock=clock)
    pipeline.open()
    try:
        runner_for(pipeline).catch_up()
        rows = run_sql(pipeline.sql_sources(),
                       "SELECT job, missed, epoch_ms(started_at) AS t FROM job_runs "
                       "WHERE \"trigger\" = 'start-up' AND missed > 0 ORDER BY t, job").to_pylist()
    finally:
        pipeline.close_offline()
    assert {(r["job"], r["missed"]) for r in rows} == {("seal", 25), ("rollup", 25), ("age_out", 2),
                                                      ("compact", 2), ("lifecycle", 2), ("glue", 2),
                                                      ("retrieve", 2), ("verify", 2)}

    clock.advance(30)  # half a period later nothing is due
    pipeline = Pipeline(settings, clock=clock)
    pipeline.open()
    try:
        assert runner_for(pipeline).catch_up() == []
    finally:
        pipeline.close_offline()


def test_a_seal_that_leaves_a_segment_in_the_log_is_a_failed_run(tmp_path, monkeypatch):
    # The seal job retries a failing segment at its next period instead of raising; the run
    # that left it must still say it failed (`fabtier lifecycle run` exits 1 on "error").
    pipeline = Pipeline(make_settings(tmp_path, None, cold={"seal_in_child": False}), clock=ManualClock(T0))
    pipeline.open(warm=False)
    try:
        payload = json.dumps({"ts": [T0 - 1000], "sensor": ["temp"], "v": [20.5]})
        pipeline.process([("fab/etch-01", payload.encode(), 0, 0)])
        pipeline.wal.commit()

        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(pipeline.lake, "write_segment", full)
        runner = JobRunner(pipeline)
        report = runner.run("seal")
        assert "error" in report and "1 log segment(s)" in report["error"], report
        assert [r["outcome"] for r in runner.history.table().to_pylist()] == ["failed"]
        assert runner.history.last_completed("seal") is None  # tried again at its next period
        monkeypatch.undo()
        assert runner.run("seal") == {"job": "seal", "segments": 1, "rows": 1, "files": 1}
    finally:
        pipeline.close_offline()


class _IdleHost:
    """A job host whose seal finds a segment with nothing to write (e.g. only duplicates)."""

    def __init__(self, report) -> None:
        self.report = report
        self.seal_lock = threading.Lock()

    def seal(self):
        return self.report

    def hidden_segments(self) -> set[int]:
        return {7}  # the active segment only: nothing was left behind


def test_the_seal_job_logs_only_when_something_was_sealed(caplog):
    from tiers.cold import SealReport

    with caplog.at_level(logging.INFO, logger="fabtier.lifecycle"):
        jobs.seal(jobs.JobContext(_IdleHost(SealReport(segments=1, rows=0, files=0)), now_ms=T0, at_ms=T0))
        assert [r.getMessage() for r in caplog.records] == []
        jobs.seal(jobs.JobContext(_IdleHost(SealReport(segments=1, rows=5, files=2)), now_ms=T0, at_ms=T0))
    assert [r.getMessage() for r in caplog.records] == ["sealed 1 segment(s): 5 readings in 2 file(s)"]
