"""The APScheduler 3.x scheduler that runs the tiering jobs of `lifecycle.jobs`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from lifecycle import jobs

if TYPE_CHECKING:
    from fabtier.pipeline import Pipeline


def start_scheduler(pipeline: "Pipeline") -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
        # One run at a time; runs missed while one was busy fold into a single run.
        "max_instances": 1,
        "coalesce": True,
        "misfire_grace_time": None,
    })
    scheduler.add_job(jobs.seal, "interval", seconds=pipeline.settings.cold.seal_every,
                      id=jobs.SEAL, args=[pipeline])
    every = pipeline.settings.lifecycle.run_every
    for job in (jobs.compact, jobs.cold_lifecycle, jobs.glue_catalog):
        scheduler.add_job(job, "interval", seconds=every, id=job.__name__, args=[pipeline])
    scheduler.start()
    return scheduler
