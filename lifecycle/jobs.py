"""Tiering jobs, as module-level functions with stable ids (APScheduler references them so).

Each job is idempotent: running it again after a crash or by hand redoes nothing twice.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fabtier.pipeline import Pipeline

log = logging.getLogger("fabtier.lifecycle")

SEAL = "seal"


def seal(pipeline: "Pipeline") -> dict:
    """Close the active log segment and move every closed one into the Parquet lake."""
    report = pipeline.seal()
    if report.segments:
        log.info("sealed %d segment(s): %d readings in %d file(s)", report.segments, report.rows, report.files)
    return {"job": SEAL, "segments": report.segments, "rows": report.rows, "files": report.files}


def compact(pipeline: "Pipeline", now_ms: int | None = None) -> dict:
    """Merge the lake's small files of settled hours (lifecycle.coldjobs)."""
    from lifecycle import coldjobs
    return coldjobs.compact(pipeline, now_ms)


def cold_lifecycle(pipeline: "Pipeline", now_ms: int | None = None) -> dict:
    """Archive and expire lake objects by age (S3: keep the bucket's rules in sync)."""
    from lifecycle import coldjobs
    return coldjobs.apply_lifecycle_policy(pipeline, now_ms)


def glue_catalog(pipeline: "Pipeline") -> dict:
    """Register the lake's hours in the Glue catalog, when one is configured."""
    from lifecycle import coldjobs
    return coldjobs.sync_glue(pipeline)


def run_all(pipeline: "Pipeline", now_ms: int | None = None) -> list[dict]:
    """Every tiering job once, in tier order (`fabtier lifecycle run`); `now_ms`: evaluate
    ages as of then instead of the pipeline's clock."""
    return [seal(pipeline), compact(pipeline, now_ms), cold_lifecycle(pipeline, now_ms), glue_catalog(pipeline)]
