"""The HTTP API's parameters: their limits (as the routes of fabtier.api declare them, so that
the OpenAPI schema shows them) and the 400 that names a parameter that does not fit and says
what fits; and what every route answers with (`Answer`, `in_thread`). No I/O, so that every
limit is tested without a server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.responses import Response

# Ten years of minutes: far past any hot window, far below where minutes * 60_000 overflows.
MAX_MINUTES = 10 * 366 * 24 * 60
MAX_POINTS = 100_000
# `now` for a lifecycle run: ages measured against a time before 2000 or after 2999 are a typo.
MIN_NOW_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_NOW_MS = 32_503_680_000_000  # 3000-01-01T00:00:00Z
MAX_ALERTS = 10_000  # alerts in one answer of GET /alerts
MAX_BUCKET_MS = 3_600_000  # GET /bands: an hour a bucket at most
# Filter values of GET /alerts: text without control characters.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

# What fits, per parameter: the second half of "minutes must be ..., not '0'".
WHAT_FITS: Mapping[str, str] = {
    "minutes": f"a number above 0 and at most {MAX_MINUTES}",
    "points": f"a whole number from 1 to {MAX_POINTS}",
    "now": f"epoch milliseconds (a whole number) from {MIN_NOW_MS} (2000-01-01) to before {MAX_NOW_MS} (3000-01-01)",
    "machine": "a machine's name (not empty, no control characters)",
    "sensor": "a sensor's name (not empty)",
    "format": "json, csv or arrow",
    "archived": "notice or error",
    "state": "open or recent",
    "rule": "a rule's name (no control characters)",
    "lot": "a lot's id (no control characters)",
    "limit": f"a whole number from 1 to {MAX_ALERTS}",
    "since": f"epoch milliseconds (a whole number) from {MIN_NOW_MS} (2000-01-01) to before {MAX_NOW_MS} (3000-01-01)",
    "bucket_ms": f"a whole number of milliseconds from 1 to {MAX_BUCKET_MS}",
}


class BadRequest(ValueError):
    """A request parameter that does not fit; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param

    def body(self) -> dict:
        return {"error": str(self), "parameter": self.param}


@dataclass(frozen=True)
class Answer:
    """A route's answer: status, JSON body, headers (built without HTTP, so that a route's
    work is tested without a server)."""

    status: int
    body: object
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        return respond(json.dumps(self.body, default=str).encode(), "application/json", self.headers, self.status)


def respond(body: bytes, content_type: str, headers: Mapping[str, str], status: int = 200) -> Response:
    """A response whose header names go out as written here (`Allow`, `X-Fabtier-...`):
    Starlette lower-cases them, and clients that keep headers in a plain dict look them up
    as this API has always sent them. The content type as given (Starlette would add a
    charset to text/csv)."""
    response = Response(body, status_code=status)
    response.raw_headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in
                            {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}.items()]
    return response


T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a thread of its own, which ends with it (as the API's threads always
    did): nothing a request leaves in thread-local state outlives it. (A DuckDB connection
    kept in a thread's locals once crashed every seal child forked beside that thread:
    analytics.parsetree.)"""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():  # the request was given up (the client went away)
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        outcome: tuple[T | None, BaseException | None]
        try:
            outcome = fn(*args), None
        except BaseException as exc:  # handed to the request's task, which raises it
            outcome = None, exc
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the server stopped meanwhile: nobody waits for the answer
            pass

    threading.Thread(target=run, name="api-request", daemon=True).start()
    return await done


def request_body(model: type[BaseModel], *, text: str | None = None) -> dict:
    """The OpenAPI `requestBody` of a route that reads its body itself (to name the field that
    does not fit in its 400): JSON as `model` says, and plain text when `text` says what."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema(by_alias=True)}}
    if text is not None:
        content["text/plain"] = {"schema": {"type": "string", "description": text}}
    return {"requestBody": {"required": True, "content": content}}


def from_validation(errors: Sequence[Mapping[str, Any]]) -> BadRequest:
    """The 400 of the first parameter the framework's validation (pydantic) refused, in the
    API's words: `{name} is required` or `{name} must be <what fits>, not <given>`."""
    if not errors:
        return BadRequest("request", "the request does not fit")
    error = errors[0]
    loc = [str(part) for part in error.get("loc", ())]
    name = loc[-1] if len(loc) > 1 else (loc[0] if loc else "request")
    if error.get("type") == "repeated":
        return BadRequest(name, str(error.get("msg")))
    if error.get("type") == "missing":
        return BadRequest(name, f"{name} is required")
    fits = WHAT_FITS.get(name) or str(error.get("msg", "something else"))
    return BadRequest(name, f"{name} must be {fits}, not {error.get('input')!r}")


def repeated(names: Iterable[str]) -> BadRequest | None:
    """A parameter given more than once (the query's names in order): which value counts
    would be a guess."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return BadRequest(name, f"give {name} once")
        seen.add(name)
    return None


async def given_once(request: Request) -> None:
    """A route's dependency: a query parameter given twice is a 400 naming it."""
    twice = repeated(name for name, _ in request.query_params.multi_items())
    if twice is not None:
        raise RequestValidationError([{"loc": ("query", twice.param), "type": "repeated", "msg": str(twice),
                                       "input": None}])


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
