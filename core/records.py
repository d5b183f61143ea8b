"""Records that cross packages: made in one layer, logged, stored or sent by others. Pure data.

An alert event is made by `alerts/`, framed into the log by `ingest/`, and sealed by `tiers/`;
an object's description comes from a store (`tiers/`) and drives the lifecycle
(`lifecycle/`). Keeping them here lets each of those packages depend downwards only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

STANDARD = "STANDARD"
GLACIER = "GLACIER"
DEEP_ARCHIVE = "DEEP_ARCHIVE"
# Classes whose objects must be restored before they can be read (GLACIER_IR is readable).
ARCHIVED = frozenset({GLACIER, DEEP_ARCHIVE})
STORAGE_CLASSES = frozenset({STANDARD, "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                             "GLACIER_IR", GLACIER, DEEP_ARCHIVE})


# S3's retrieval tiers for restoring an archived object (RestoreObject's GlacierJobParameters
# Tier: Expedited, Standard, Bulk), as fabtier spells them (`--speed`), fastest first.
SPEEDS = ("expedited", "standard", "bulk")


class RestoreRequest(enum.Enum):
    """What a store answered to a request to restore an archived object."""

    STARTED = "started"            # a restore began now (S3: 202 Accepted)
    IN_PROGRESS = "in_progress"    # one was already running (S3: 409 RestoreAlreadyInProgress)
    RESTORED = "restored"          # a restored copy exists; its expiry was renewed (S3: 200 OK)
    NOT_ARCHIVED = "not_archived"  # the object is readable as it is (S3: 403 InvalidObjectState)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified_ms: int
    storage_class: str = STANDARD
    # The restore state of an archived object, as the store saw it when it described the
    # object: a restore is running, or a restored copy can be read until restore_expiry_ms.
    restore_ongoing: bool = False
    restore_expiry_ms: int | None = None

    @property
    def archived(self) -> bool:
        """In an archive class (GLACIER, DEEP_ARCHIVE), restored or not."""
        return self.storage_class in ARCHIVED

    @property
    def restored(self) -> bool:
        """An archived object whose restored copy can be read now."""
        return self.archived and not self.restore_ongoing and self.restore_expiry_ms is not None

    @property
    def readable(self) -> bool:
        return not self.archived or self.restored


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert event: the MQTT payload of CONTRACT.md section 3 and a row of `alerts`."""

    seq: int  # per writer, increasing: the event's place in the alert log
    writer: str
    machine: str
    sensor: str
    ts: int  # the reading's epoch ms
    value: float
    kind: str  # "high" | "low"
    threshold: float
    rule: str
    state: str  # "raised" | "cleared"
    raised_at: int  # the pipeline's epoch ms when it decided
    flapping: bool = False
    note: str = ""
    lot: str | None = None
    wafer: str | None = None
    recipe: str | None = None
    recipe_version: str | None = None
    step: str | None = None

    @property
    def id(self) -> str:
        return f"{self.writer}:{self.seq}"
