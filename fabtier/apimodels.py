"""The shapes of the HTTP API's bodies, as pydantic models: the OpenAPI schema at
`/openapi.json` is generated from them and from the routes (fabtier.api). The routes build
their answers from the pipeline's own dicts; the models say what those hold (every model
lets more fields through: the API may extend an answer, never take a field away)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from alerts import acks
from core.records import SPEEDS
from lifecycle.retrieval import MAX_MS, MIN_MS
from tiers.inventory import TierRow

Speed = Literal["expedited", "standard", "bulk"]
assert set(get_args(Speed)) == set(SPEEDS), "fabtier.apimodels.Speed must list core.records.SPEEDS"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(_Open):
    error: str = Field(description="what went wrong, in words")
    parameter: str | None = Field(None, description="the parameter or field that does not fit (400)")


class Problem(_Open):
    step: str = Field(description="`seal`, `write-ahead log` or a tiering job's id")
    message: str
    fix: str | None
    failures: int = Field(description="failures since it last worked")
    since: str = Field(description="ISO-8601 UTC")
    last: str = Field(description="ISO-8601 UTC")
    since_ms: int
    last_ms: int


class Health(_Open):
    status: str = Field(description="the run state, or `degraded` when ready while steps fail")
    state: str = Field(description="the run state: created, recovering, ready, stopping, stopped, failed")
    failure: str | None = Field(description="why ingestion stopped for good (state failed)")
    data_dir_id: str | None = Field(description="the identity of the data directory served")
    problems: list[Problem]


class Sensor(_Open):
    machine: str
    sensor: str


class Band(_Open):
    sensor: str
    t: int = Field(description="the bucket's start, epoch ms (a multiple of bucket_ms)")
    mn: float = Field(description="the bucket's lowest reading")
    mx: float = Field(description="the bucket's highest reading")
    av: float = Field(description="the mean of the bucket's readings")
    n: int = Field(description="how many readings the bucket holds")


class Bands(_Open):
    machine: str
    since_ms: int
    bucket_ms: int
    complete: bool = Field(description="whether the hot ring holds every reading of each of the machine's "
                                       "sensors since since_ms; if not, the oldest part may be missing here "
                                       "(SQL over `readings` has it)")
    rows: list[Band] = Field(description="per sensor and bucket, as `SELECT sensor, (epoch_ms(ts) // bucket_ms) "
                                         "* bucket_ms AS t, min(value) AS mn, max(value) AS mx, avg(value) AS av, "
                                         "count(*) AS n FROM readings ... GROUP BY ALL` answers")


class Series(_Open):
    machine: str
    sensor: str
    ts: list[int] = Field(description="epoch ms of each point")
    v: list[float] = Field(description="each point's average")
    complete_from_ms: int = Field(description="epoch ms from which the hot ring holds every reading of the sensor "
                                              "(older ones: pushed out by [hot] memory_budget, or before this run)")
    shorter_than_asked: bool = Field(description="whether the span asked for starts before complete_from_ms, so "
                                                 "its oldest part is missing here (SQL over `readings` has it)")
    query_us: float = Field(description="the ring's answer time")
    wait_us: float = Field(description="the part of it spent waiting for the ingest lock")
    fell_back: bool = Field(description="whether it waited for the ingest lock")
    gil_wait_us: float = Field(description="the wait for the interpreter lock before the read")


class Tiers(_Open):
    tiers: list[TierRow]  # tiers.inventory's own record: one list of the fields
    total_usd_per_month: float


class SqlRequest(BaseModel):
    """POST /sql as JSON (the body may also be the statement as text)."""

    sql: str = Field(description="one SELECT (or EXPLAIN)")


class RetrievalRequest(BaseModel):
    """POST /retrievals. `to` after `from`; speed expedited is refused for DEEP_ARCHIVE."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    from_: int = Field(alias="from", ge=MIN_MS, lt=MAX_MS, description="epoch ms")
    to: int = Field(ge=MIN_MS, lt=MAX_MS, description="epoch ms (exclusive)")
    machine: str | None = Field(None, min_length=1)
    sensor: str | None = Field(None, min_length=1)
    speed: Speed | None = Field(None, description="by default `[retrieval] speed`")


class RetrievalJob(_Open):
    """The retrieval job (CONTRACT.md section 5): `fabtier retrieve --json` prints the same."""

    id: str
    state: Literal["pending", "restoring", "ready", "failed"]
    objects: list[dict[str, Any]]
    bytes: int
    eta_s: float | None
    cost_usd: float | None


# Text without control characters but tab and newline (alerts.acks.check_request).
_TEXT = r"^[^\x00-\x08\x0b-\x1f]*$"


class AckRequest(BaseModel):
    """POST /alerts/{id}/ack (checked by alerts.acks.check_request, which this mirrors)."""

    model_config = ConfigDict(extra="forbid")

    who: str = Field(min_length=1, max_length=acks.MAX_WHO, pattern=r"^[^\x00-\x08\x0b-\x1f]*[^\s\x00-\x1f]"
                     r"[^\x00-\x08\x0b-\x1f]*$", description="who acknowledges (not blank)")
    note: str = Field("", max_length=acks.MAX_NOTE, pattern=_TEXT, description="why, or what was done")


class Ack(_Open):
    alert_id: str = Field(description="the alert's `id` (writer:seq)")
    who: str
    at: int = Field(description="epoch ms when it was acknowledged")
    note: str


class AckEntry(_Open):
    who: str
    at: int = Field(description="epoch ms")
    note: str


class Alert(_Open):
    """An alert event as published on MQTT (CONTRACT.md section 3 and its extensions), with
    its acknowledgements."""

    id: str = Field(description="writer:seq")
    machine: str
    sensor: str
    ts: int = Field(description="the reading's epoch ms")
    value: float
    kind: str
    threshold: float | None
    rule: str
    state: Literal["raised", "cleared"]
    raised_at: int = Field(description="the pipeline's epoch ms when it decided")
    flapping: bool | None
    note: str | None
    lot: str | None
    wafer: str | None
    recipe: str | None
    recipe_version: str | None
    step: str | None
    seq: int
    acked: bool = Field(description="whether anyone acknowledged it")
    acks: list[AckEntry] = Field(description="its acknowledgements, oldest first")
