"""A pipeline's run state and counters, shared by its roles (ingesting, sealing, reads)."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

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
