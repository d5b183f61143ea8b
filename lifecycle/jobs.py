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


def run_all(pipeline: "Pipeline") -> list[dict]:
    """Every tiering job once, in tier order (`fabtier lifecycle run`)."""
    return [seal(pipeline)]
