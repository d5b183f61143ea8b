"""Checking the HTTP API's parameters: each bad one is a 400 that names it and says what fits.
Pure: no I/O, so that every limit is tested without a server."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

# Ten years of minutes: far past any hot window, far below where minutes * 60_000 overflows.
MAX_MINUTES = 10 * 366 * 24 * 60
MAX_POINTS = 100_000
# `now` for a lifecycle run: ages measured against a time before 2000 or after 2999 are a typo.
MIN_NOW_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_NOW_MS = 32_503_680_000_000  # 3000-01-01T00:00:00Z


class BadRequest(ValueError):
    """A request parameter that does not fit; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SeriesQuery:
    machine: str
    sensor: str
    minutes: float
    points: int


def _one(query: dict[str, list[str]], name: str, default: str | None = None) -> str:
    values = query.get(name)
    if not values:
        if default is None:
            raise BadRequest(name, f"{name} is required")
        return default
    if len(values) > 1:
        raise BadRequest(name, f"give {name} once")
    return values[0]


def series_query(query: dict[str, list[str]]) -> SeriesQuery:
    machine, sensor = _one(query, "machine"), _one(query, "sensor")
    if not machine or not sensor:
        raise BadRequest("machine" if not machine else "sensor", "machine and sensor must not be empty")
    text = _one(query, "minutes", "10")
    try:
        minutes = float(text)
    except ValueError:
        raise BadRequest("minutes", f"minutes must be a number, not {text!r}") from None
    if not math.isfinite(minutes) or not 0 < minutes <= MAX_MINUTES:
        raise BadRequest("minutes", f"minutes must be a number above 0 and at most {MAX_MINUTES}, not {text!r}")
    text = _one(query, "points", "300")
    try:
        points = int(text)
    except ValueError:
        raise BadRequest("points", f"points must be a whole number, not {text!r}") from None
    if not 1 <= points <= MAX_POINTS:
        raise BadRequest("points", f"points must be from 1 to {MAX_POINTS}, not {points}")
    return SeriesQuery(machine, sensor, minutes, points)


def lifecycle_now(query: dict[str, list[str]]) -> int | None:
    """`now` of POST /lifecycle/run: epoch milliseconds, or None for the clock's now."""
    if "now" not in query:
        return None
    text = _one(query, "now")
    if not text.lstrip("-").isdigit():
        raise BadRequest("now", f"now must be epoch milliseconds (a whole number), not {text!r}")
    now = int(text)
    if not MIN_NOW_MS <= now < MAX_NOW_MS:
        raise BadRequest("now", f"now must be epoch milliseconds from {MIN_NOW_MS} (2000-01-01) "
                                f"to before {MAX_NOW_MS} (3000-01-01), not {text}")
    return now


def sql_statement(body: bytes, content_type: str) -> str:
    """The statement of POST /sql: the body as text, or `{"sql": "..."}` as JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("sql", "the statement must be UTF-8 text") from None
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            document = json.loads(text)
        except ValueError:
            raise BadRequest("sql", 'the body is not JSON; send {"sql": "SELECT ..."}') from None
        if not isinstance(document, dict) or "sql" not in document:
            raise BadRequest("sql", 'send {"sql": "SELECT ..."}')
        text = document["sql"]
        if not isinstance(text, str):
            raise BadRequest("sql", f"sql must be a string (the statement), not {type(text).__name__}")
    if not text.strip():
        raise BadRequest("sql", "the statement is empty; send one SELECT")
    return text
