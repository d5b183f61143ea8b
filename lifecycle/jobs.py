"""Tiering jobs, as module-level functions with stable ids (APScheduler references them so).

Each job is idempotent: running it again after a crash or by hand redoes nothing twice.
A job takes a `JobContext` and returns a JSON-able report; `JOBS` lists them in tier order
with their periods. Adding a job is one line in `JOBS` (and its function).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from core.settings import Settings
from lifecycle import coldjobs, retrievals, verify, warmjobs
from lifecycle.host import JobHost

log = logging.getLogger("fabtier.lifecycle")

SEAL = "seal"
ROLLUP = "rollup"
AGE_OUT = "age_out"
VERIFY = verify.JOB
# A scheduled verify reads at most this much a run (a first run over a large lake, or over S3,
# is spread over several periods); `fabtier lake verify` reads everything that is due.
VERIFY_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class JobContext:
    pipeline: JobHost
    now_ms: int  # the time ages are measured against (`fabtier lifecycle run --now`)
    at_ms: int   # the pipeline clock's time of the run, for the audit trail


@dataclass(frozen=True)
class Job:
    id: str
    run: Callable[[JobContext], dict]
    every: Callable[[Settings], float]  # seconds between scheduled runs


def seal(ctx: JobContext) -> dict:
    """Close the active log segment and move every closed one into the Parquet lake.

    A segment that fails is kept in the log and retried at the next period (the seal goes on
    with the others); a run that leaves one behind reports an "error", as a failed job does."""
    p = ctx.pipeline
    report = p.seal()
    if report.rows or report.files:
        log.info("sealed %d segment(s): %d readings in %d file(s)", report.segments, report.rows, report.files)
    result: dict = {"job": SEAL, "segments": report.segments, "rows": report.rows, "files": report.files}
    with p.seal_lock:  # a seal started meanwhile has finished: what is left now was not sealed
        # Every segment but the newest (the active one, where appends go) is closed.
        left = sorted(p.hidden_segments())[:-1]
    if left:
        result["error"] = (f"{len(left)} log segment(s) could not be sealed ({', '.join(map(str, left))}); "
                           "they stay in the log and the next run tries again (the store's reason is in the "
                           "ERROR line of each segment and in /health)")
    return result


def rollup(ctx: JobContext) -> dict:
    """Recompute the per-minute aggregates of every minute that newly sealed raw data touches."""
    p = ctx.pipeline
    if p.warm is None:
        raise RuntimeError("the warm store is not open")
    report = warmjobs.rollup(store=p.lake.store, warm=p.warm, audit=p.audit)
    if report.minutes:
        log.info("rolled up %d minute(s) from %d raw file(s)", report.minutes, report.files)
    return {"job": ROLLUP, "files": report.files, "minutes": report.minutes,
            "skipped_archived": report.skipped_archived, "archived_files": report.archived_files}


def age_out(ctx: JobContext) -> dict:
    """Move warm minutes older than `[warm] retention` to the lake's agg_1m/ Parquet."""
    p = ctx.pipeline
    if p.warm is None:
        raise RuntimeError("the warm store is not open")
    cutoff = ctx.now_ms - int(p.settings.warm.retention * 1000)
    report = warmjobs.age_out(store=p.lake.store, warm=p.warm, audit=p.audit,
                              writer_id=p.settings.cold.writer_id, cutoff_ms=cutoff, at_ms=ctx.at_ms)
    if report.minutes:
        log.info("aged out %d minute(s) into %d agg_1m file(s)", report.minutes, report.files)
    return {"job": AGE_OUT, "minutes": report.minutes, "files": report.files, "kept": report.kept}


def compact(ctx: JobContext) -> dict:
    """Merge the lake's small files of settled hours (lifecycle.coldjobs)."""
    return coldjobs.compact(ctx.pipeline, ctx.now_ms, at_ms=ctx.at_ms)


def cold_lifecycle(ctx: JobContext) -> dict:
    """Archive and expire lake objects by age (S3: keep the bucket's rules in sync)."""
    return coldjobs.apply_lifecycle_policy(ctx.pipeline, ctx.now_ms, at_ms=ctx.at_ms)


def glue_catalog(ctx: JobContext) -> dict:
    """Register the lake's hours in the Glue catalog, when one is configured."""
    return coldjobs.sync_glue(ctx.pipeline)


def retrieve(ctx: JobContext) -> dict:
    """Follow the open retrieval jobs (restores asked, done, expired) and send their notices.
    Restores are timed by the clock, never by `--now` (which only says how old data is)."""
    p = ctx.pipeline
    return retrievals.follow_and_notify(settings=p.settings, store=p.lake.store, now_ms=ctx.at_ms)


def verify_lake(host: JobHost, *, at_ms: int, full: bool = False,
                max_bytes: int | None = None) -> verify.VerifyReport:
    """Verify the lake's files against the audit trail and set damaged ones aside
    (lifecycle.verify); incremental unless `full`."""
    return verify.verify_lake(store=host.lake.store, audit=host.audit,
                              state_dir=host.settings.data_dir / "lifecycle", writer_id=host.settings.cold.writer_id,
                              hidden_segments=host.hidden_segments, lock=host.seal_lock, at_ms=at_ms, full=full,
                              max_bytes=max_bytes)


def verify_files(ctx: JobContext) -> dict:
    """Read back the lake files new or changed since the last run and judge them against the
    audit trail; a damaged one is set aside under damaged/. The run reports a failure (so
    /health says degraded) while damaged/ holds a file nobody has dealt with."""
    report = verify_lake(ctx.pipeline, at_ms=ctx.at_ms, max_bytes=VERIFY_MAX_BYTES)
    if report.checked:
        log.info("verified %d lake file(s) (%d bytes), %d damaged%s", report.checked, report.bytes_read,
                 len(report.damaged), f", {report.left} left for the next run" if report.left else "")
    return report.public(with_unchanged=False)


# Tier order: a manual run and a catch-up on start run them in this order.
JOBS: tuple[Job, ...] = (
    Job(SEAL, seal, lambda s: s.cold.seal_every),
    Job(ROLLUP, rollup, lambda s: s.warm.rollup_every),
    Job(AGE_OUT, age_out, lambda s: s.warm.age_out_every),
    Job(coldjobs.COMPACT, compact, lambda s: s.lifecycle.run_every),
    Job(coldjobs.LIFECYCLE, cold_lifecycle, lambda s: s.lifecycle.run_every),
    Job(coldjobs.GLUE, glue_catalog, lambda s: s.lifecycle.run_every),
    Job(retrievals.RETRIEVE, retrieve, lambda s: s.retrieval.poll_every),
    Job(VERIFY, verify_files, lambda s: s.lifecycle.run_every),
)


def job(job_id: str) -> Job:
    for found in JOBS:
        if found.id == job_id:
            return found
    raise KeyError(job_id)
