"""A pipeline's run state and counters, shared by its roles (ingesting, sealing, reads).

`Status` is the run state (FAILED is fail-stop); `Metrics.faults` (lifecycle.health.Faults)
holds the steps that fail now without stopping anything (a seal the store refuses), which
make `/health` say `degraded`. Code of this layer that runs a step of its own (e.g. a
retrieval asked through the API) notes it with `step_failed` / `step_worked`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from core.settings import Settings
from lifecycle.health import Faults, Problem, describe, traceback_of, with_fix

log = logging.getLogger("fabtier.pipeline")


class State(enum.Enum):
    CREATED = "created"
    RECOVERING = "recovering"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Status:
    """The pipeline's state; FAILED is final (fail-stop): nothing moves it on."""

    def __init__(self) -> None:
        self.state = State.CREATED
        self.failure: str | None = None

    @property
    def failed(self) -> bool:
        return self.state is State.FAILED

    def move(self, state: State) -> None:
        if not self.failed:
            self.state = state

    def fail(self, reason: str) -> bool:
        """Stop for good with `reason`; False when it had already failed."""
        if self.failed:
            return False
        log.critical("ingestion stopped: %s", reason)
        self.failure = reason
        self.state = State.FAILED
        return True


@dataclass
class Metrics:
    messages: int = 0
    readings_stored: int = 0
    duplicates_dropped: int = 0
    quarantined: int = 0
    context_events: int = 0
    acked: int = 0
    commits: int = 0
    segments_sealed: int = 0
    rows_sealed: int = 0
    seal_failures: int = 0
    internal_errors: int = 0
    backpressure: bool = False  # acknowledgements are being held back right now
    backpressure_commits: int = 0  # group commits whose acknowledgements were held back
    alert_events: int = 0

    def __post_init__(self) -> None:
        # Not a field: the /metrics snapshot (dataclasses.asdict) copies fields only.
        self.faults = Faults()


def step_failed(metrics: Metrics, step: str, exc: BaseException | str, *, settings: Settings, at_ms: int,
                what: str = "", then: str = "") -> Problem:
    """Note that `step` failed: one ERROR line with the store's reason and the known fix (and
    `then`, what happens next); /health says degraded until `step_worked(step)`. `what`
    prefixes the reason (e.g. the segment). An unexpected exception (not a FabtierError or an
    OSError, which carry the store's or the system's reason) also logs its traceback."""
    reason, fix = describe(exc, settings)
    if what:
        reason = f"{what}: {reason}"
    log.error("%s failed: %s%s", step, with_fix(reason, fix), f"; {then}" if then else "",
              exc_info=traceback_of(exc))
    return metrics.faults.failed(step, reason, at_ms=at_ms, fix=fix)


def step_worked(metrics: Metrics, step: str, *, at_ms: int) -> None:
    metrics.faults.succeeded(step, at_ms=at_ms)
