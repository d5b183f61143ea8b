"""Records that cross packages: made in one layer, logged, stored or sent by others. Pure data.

An alert event is made by `alerts/`, framed into the log by `ingest/`, and sealed by `tiers/`;
an object's description comes from a store (`tiers/`) and drives the lifecycle
(`lifecycle/`). Keeping them here lets each of those packages depend downwards only.
"""

from __future__ import annotations

from dataclasses import dataclass

STANDARD = "STANDARD"
GLACIER = "GLACIER"
DEEP_ARCHIVE = "DEEP_ARCHIVE"
# Classes whose objects must be restored before they can be read (GLACIER_IR is readable).
ARCHIVED = frozenset({GLACIER, DEEP_ARCHIVE})
STORAGE_CLASSES = frozenset({STANDARD, "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                             "GLACIER_IR", GLACIER, DEEP_ARCHIVE})


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified_ms: int
    storage_class: str = STANDARD

    @property
    def archived(self) -> bool:
        return self.storage_class in ARCHIVED


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
