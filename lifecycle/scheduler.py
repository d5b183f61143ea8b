"""Running the tiering jobs of `lifecycle.jobs`: by hand, on a schedule (APScheduler 3.x),
and once on start for every job whose period passed while the process was down.

Never twice at once: each job has one lock per pipeline; a scheduled run that finds its job
busy is skipped (the running one does the work), a manual run waits for it. Across
processes the data directory's exclusive lock keeps a second pipeline out, and
`fabtier lifecycle run` goes through the running instance's API.
Every run is noted in `lifecycle.runs.RunHistory`; its `last_completed` survives restarts,
which is what the catch-up on start is measured against (APScheduler's memory store forgets).
A failed run's report always carries an "error" (the job raised, or it went on past a failure
and said so); `fabtier lifecycle run` exits 1 on one. A job whose run fails is logged at ERROR
with the reason (the store's, for a store's refusal) and the known fix, counted, and open in
the runner's `faults` (`/health`: degraded) until a later run of that job works: a job that
finds a failure it can go on past (a retrieval's refused restore, say) reports it in "error".
"""

from __future__ import annotations

import logging
import threading
import weakref

import orjson
from apscheduler.schedulers.background import BackgroundScheduler

from lifecycle import jobs
from lifecycle.health import Faults, describe, traceback_of, with_fix
from lifecycle.host import JobHost
from lifecycle.runs import JobRun, RunHistory

log = logging.getLogger("fabtier.lifecycle")


def missed_periods(last_ms: int | None, period_s: float, now_ms: int) -> int:
    """How many whole periods passed since the last completed run without one (0 if none)."""
    if last_ms is None or period_s <= 0:
        return 0
    return max(0, int((now_ms - last_ms) // int(period_s * 1000)))


def _did_something(report: dict) -> bool:
    return any(isinstance(v, int) and not isinstance(v, bool) and v > 0
               for k, v in report.items() if k != "job")


class JobRunner:
    """Runs the jobs of one pipeline; one instance per pipeline (see `runner_for`)."""

    def __init__(self, pipeline: JobHost, job_list: tuple[jobs.Job, ...] | None = None) -> None:
        self.pipeline = pipeline
        self.jobs = job_list if job_list is not None else jobs.JOBS
        self.history = RunHistory(pipeline.settings.data_dir / "lifecycle")
        self._locks = {job.id: threading.Lock() for job in self.jobs}
        self.faults = Faults()  # jobs whose last run failed; failures per job

    def _job(self, job_id: str) -> jobs.Job:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(job_id)

    def run(self, job_id: str, *, now_ms: int | None = None, trigger: str = "manual",
            missed: int = 0) -> dict:
        job = self._job(job_id)
        clock = self.pipeline.clock
        lock = self._locks[job.id]
        if not lock.acquire(blocking=trigger == "manual"):
            started = clock.now_ms()
            self.history.record(JobRun(job.id, trigger, "skipped", started, started, now_ms or started,
                                       missed, "the job was already running"), keep=True)
            return {"job": job.id, "skipped": "already running"}
        try:
            started = clock.now_ms()
            as_of = started if now_ms is None else now_ms
            failure: BaseException | str | None = None
            try:
                report = job.run(jobs.JobContext(self.pipeline, now_ms=as_of, at_ms=started))
                outcome, detail = "ok", orjson.dumps(report).decode()
                if "error" in report:  # the job went on past a failure and reported it
                    failure = str(report["error"])
                    outcome = "failed"
            except Exception as exc:  # a failed job is retried at its next period; the data stays
                failure = exc
                report = {"job": job.id, "error": f"{type(exc).__name__}: {exc}"}
                outcome, detail = "failed", report["error"]
            if failure is not None:
                reason, fix = describe(failure, self.pipeline.settings)
                log.error("tiering job %s failed: %s; it runs again at its next period", job.id,
                          with_fix(reason, fix), exc_info=traceback_of(failure))
                self.faults.failed(job.id, reason, at_ms=clock.now_ms(), fix=fix)
                if fix:
                    report["fix"] = fix
            else:
                self.faults.succeeded(job.id, at_ms=clock.now_ms())
            finished = clock.now_ms()
            keep = outcome != "ok" or trigger != "schedule" or missed > 0 or _did_something(report)
            self.history.record(JobRun(job.id, trigger, outcome, started, finished, as_of, missed, detail),
                                keep=keep)
            return report
        finally:
            lock.release()

    def run_all(self, *, now_ms: int | None = None, trigger: str = "manual") -> list[dict]:
        return [self.run(job.id, now_ms=now_ms, trigger=trigger) for job in self.jobs]

    def catch_up(self) -> list[dict]:
        """On start: run once every job whose period passed since its last completed run (or
        that never ran). One run does all the pending work, however many periods were missed."""
        reports = []
        for job in self.jobs:
            now = self.pipeline.clock.now_ms()
            last = self.history.last_completed(job.id)
            period = job.every(self.pipeline.settings)
            if last is None or now - last >= period * 1000:
                missed = missed_periods(last, period, now)
                if missed:
                    log.info("catching up %s: %d scheduled run(s) missed while stopped", job.id, missed)
                reports.append(self.run(job.id, trigger="start-up", missed=missed))
        return reports


_runners: weakref.WeakKeyDictionary[JobHost, JobRunner] = weakref.WeakKeyDictionary()
_runners_lock = threading.Lock()


def runner_for(pipeline: JobHost) -> JobRunner:
    """The one runner of a pipeline, shared by the scheduler and the API's manual runs."""
    with _runners_lock:
        runner = _runners.get(pipeline)
        if runner is None:
            runner = _runners[pipeline] = JobRunner(pipeline)
        return runner


def existing_runner(pipeline: JobHost) -> JobRunner | None:
    """The pipeline's runner if one was made (by the scheduler or a manual run), else None."""
    with _runners_lock:
        return _runners.get(pipeline)


def run_scheduled(pipeline: JobHost, job_id: str) -> None:
    """What APScheduler calls: one scheduled run of one job."""
    runner_for(pipeline).run(job_id, trigger="schedule")


def start_scheduler(pipeline: JobHost) -> BackgroundScheduler:
    runner = runner_for(pipeline)
    runner.catch_up()
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
        # One run at a time; runs missed while one was busy fold into a single run.
        "max_instances": 1,
        "coalesce": True,
        "misfire_grace_time": None,
    })
    for job in runner.jobs:
        scheduler.add_job(run_scheduled, "interval", seconds=job.every(pipeline.settings),
                          id=job.id, args=[pipeline, job.id])
    scheduler.start()
    return scheduler
