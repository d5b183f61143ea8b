"""The HTTP API of a running pipeline: health, metrics, read-only SQL, hot series, jobs.

Standard library only (ThreadingHTTPServer): the API is a thin adapter, and every request
that does work calls into the pipeline. Every route but /health needs the bearer token when
one is configured (401 with `WWW-Authenticate: Bearer`). A parameter that does not fit is a
400 naming it (fabtier.apiparams), an unknown route 404, a method a route does not take 405.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlparse

import pyarrow as pa

from analytics import output
from analytics.leftout import left_out
from analytics.session import run_sql
from core.errors import SqlError
from fabtier import retrieval_api
from fabtier.apiparams import (
    MAX_MINUTES,
    MAX_NOW_MS,
    MAX_POINTS,
    MIN_NOW_MS,
    BadRequest,
    lifecycle_now,
    series_query,
    sql_statement,
)
from fabtier.datadir import sql_spill_dir
from lifecycle import jobs, scheduler
from tiers.inventory import report

if TYPE_CHECKING:
    from fabtier.pipeline import Pipeline

log = logging.getLogger("fabtier.api")
ARROW_STREAM = "application/vnd.apache.arrow.stream"

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "fabtier", "version": "0.1.0"},
    "paths": {
        "/health": {"get": {"summary": "200 once the pipeline is subscribed and ready, else 503",
                            "responses": {"200": {"description": "ready; `status` is `degraded` while a step "
                                                                 "(seal, a tiering job) fails, and `problems` "
                                                                 "says which, since when, why and the fix"},
                                          "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "ingest and tiering counters",
                             "responses": {"200": {"description": "JSON object of counters"}}}},
        "/sql": {"post": {
            "summary": "one read-only SELECT over the views of CONTRACT.md section 4",
            "parameters": [{"name": "format", "in": "query",
                            "schema": {"type": "string", "enum": ["json", "csv", "arrow"]}},
                           {"name": "archived", "in": "query",
                            "schema": {"type": "string", "enum": ["notice", "error"], "default": "notice"},
                            "description": "when archived objects hold readings the answer cannot read: "
                                           "answer with X-Fabtier-Left-Out-* headers, or 409"}],
            "requestBody": {"content": {"text/plain": {"schema": {"type": "string"}},
                                        "application/json": {"schema": {"type": "object",
                                                             "properties": {"sql": {"type": "string"}}}}}},
            "responses": {"200": {"description": "rows; X-Fabtier-Left-Out-Objects, -Bytes, -From, -To, "
                                                 "-Classes and X-Fabtier-Retrieve when archived objects "
                                                 "were left out"},
                          "400": {"description": "the database's message, or a parameter that does not fit"},
                          "409": {"description": "archived=error and archived objects hold readings"}}}},
        "/series": {"get": {
            "summary": "one sensor's last minutes from the hot ring, averaged into at most `points` points",
            "parameters": [
                {"name": "machine", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}},
                {"name": "sensor", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}},
                {"name": "minutes", "in": "query", "schema": {"type": "number", "exclusiveMinimum": True,
                                                               "minimum": 0, "maximum": MAX_MINUTES, "default": 10}},
                {"name": "points", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                              "maximum": MAX_POINTS, "default": 300}}],
            "responses": {"200": {"description": "{ts: [...], v: [...], query_us, wait_us, fell_back, "
                                                  "gil_wait_us}: the ring's answer time, the part of it spent "
                                                  "waiting for the ingest lock, whether it did, and the wait for "
                                                  "the interpreter lock before the read"},
                          "400": {"description": "a parameter that does not fit, named in `parameter`"},
                          "404": {"description": "no such sensor in the hot tier"}}}},
        "/tiers": {"get": {"summary": "rows, bytes, oldest, newest and monthly cost per tier",
                           "responses": {"200": {"description": "{tiers: [...], total_usd_per_month}"}}}},
        "/sensors": {"get": {"summary": "every (machine, sensor) seen", "responses": {"200": {"description": "list"}}}},
        "/lifecycle/run": {"post": {"summary": "run every tiering job once, now",
                                    "parameters": [{"name": "now", "in": "query",
                                                    "schema": {"type": "integer", "minimum": MIN_NOW_MS,
                                                               "maximum": MAX_NOW_MS - 1},
                                                    "description": "epoch ms that ages are measured against"}],
                                    "responses": {"200": {"description": "job reports"},
                                                  "400": {"description": "now does not fit"},
                                                  "503": {"description": "the pipeline is not ready"}}}},
        **retrieval_api.OPENAPI_PATHS,
    },
}


# Which methods each route takes: any other method gets 405 with an Allow header.
ROUTES: dict[str, tuple[str, ...]] = {
    "/health": ("GET",), "/metrics": ("GET",), "/openapi.json": ("GET",), "/tiers": ("GET",),
    "/sensors": ("GET",), "/series": ("GET",), "/sql": ("POST",), "/lifecycle/run": ("POST",),
    **retrieval_api.ROUTES,
}


def _problems(pipeline: Pipeline) -> list[dict]:
    """The steps failing now: the seal's (with the store's reason), then the tiering jobs'.
    The seal job's own entry only repeats the seal's, so it shows only when the seal has none
    (the job failed before any segment was tried)."""
    problems = pipeline.metrics.faults.problems()
    runner = scheduler.existing_runner(pipeline)
    if runner is not None:
        steps = {p.step for p in problems}
        problems += [p for p in runner.faults.problems() if p.step not in steps]
    return [p.public() for p in problems]


def health(pipeline: Pipeline) -> tuple[int, dict]:
    """/health: 200 when ready (the liveness answer), 503 otherwise. `status` is the run state,
    or `degraded` when ready while steps fail (`problems`); `state` is always the run state."""
    ready = pipeline.ready
    problems = _problems(pipeline)
    status = "degraded" if ready and problems else pipeline.state.value
    return (200 if ready else 503), {"status": status, "state": pipeline.state.value, "failure": pipeline.failure,
                                     "data_dir_id": pipeline.identity, "problems": problems}


def step_metrics(pipeline: Pipeline) -> dict:
    """Failures per tiering job (`job_failures`, every job listed) and the steps failing now."""
    runner = scheduler.existing_runner(pipeline)
    counts = runner.faults.counts() if runner is not None else {}
    job_ids = [job.id for job in (runner.jobs if runner is not None else jobs.JOBS)]
    return {"job_failures": {job_id: counts.get(job_id, 0) for job_id in job_ids},
            "failing_steps": [p["step"] for p in _problems(pipeline)]}


def _handler(pipeline: Pipeline, token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fabtier"

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(value, default=str).encode(), headers=headers)

        def _authorised(self) -> bool:
            if not token:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
            self._json(401, {"error": "missing or wrong bearer token"},
                       headers={"WWW-Authenticate": 'Bearer realm="fabtier"'})
            return False

        def _route(self, method: str) -> str | None:
            """The path when `method` may be used on it; else answers 404 or 405 and gives None."""
            path = urlparse(self.path).path
            allowed = ROUTES.get(retrieval_api.route_of(path))
            if allowed is None:
                self._json(404, {"error": f"no route {path}"})
                return None
            if method not in allowed:
                self._json(405, {"error": f"{path} takes {', '.join(allowed)}, not {method}"},
                           headers={"Allow": ", ".join(allowed)})
                return None
            if path != "/health" and not self._authorised():
                return None
            return path

        def do_GET(self) -> None:
            path = self._route("GET")
            query = parse_qs(urlparse(self.path).query)
            if path == "/health":
                status, body = health(pipeline)
                self._json(status, body)
            elif path == "/metrics":
                self._json(200, {**pipeline.metrics_snapshot(), **step_metrics(pipeline)})
            elif path == "/openapi.json":
                self._json(200, OPENAPI)
            elif path == "/tiers":
                self._json(200, report(pipeline.tier_rows()))
            elif path == "/sensors":
                self._json(200, [{"machine": m, "sensor": s} for m, s in pipeline.sensors()])
            elif path == "/series":
                self._series(query)
            elif path == retrieval_api.COLLECTION:
                answer = retrieval_api.list_retrievals(pipeline)
                self._json(answer.status, answer.body, headers=answer.headers)
            elif path is not None and retrieval_api.route_of(path) == retrieval_api.ITEM:
                answer = retrieval_api.get_retrieval(pipeline, path)
                self._json(answer.status, answer.body, headers=answer.headers)

        def _other(self) -> None:
            self._route(self.command)

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other

        def _bad(self, exc: BadRequest) -> None:
            self._json(400, {"error": str(exc), "parameter": exc.param})

        def _series(self, query: dict[str, list[str]]) -> None:
            try:
                asked = series_query(query)
            except BadRequest as exc:
                self._bad(exc)
                return
            if pipeline.keys.lookup(asked.machine, asked.sensor) is None:
                self._json(404, {"error": f"no sensor {asked.sensor!r} of machine {asked.machine!r} in the "
                                          "hot tier; GET /sensors lists them"})
                return
            since = pipeline.clock.now_ms() - int(asked.minutes * 60_000)
            timings: dict = {}
            ts, value = pipeline.series(asked.machine, asked.sensor, since_ms=since, points=asked.points,
                                        timings=timings)
            self._json(200, {"machine": asked.machine, "sensor": asked.sensor, "ts": ts.tolist(),
                             "v": value.tolist(), **timings})

        def do_POST(self) -> None:
            path = self._route("POST")
            if path is None:
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            query = parse_qs(urlparse(self.path).query)
            if path == "/sql":
                self._sql(body, query.get("format", ["json"])[0], query.get("archived", ["notice"])[0])
            elif path == "/lifecycle/run":
                try:
                    now = lifecycle_now(query)
                except BadRequest as exc:
                    self._bad(exc)
                    return
                if not pipeline.ready:
                    self._json(503, {"error": f"the pipeline is {pipeline.state.value}"})
                    return
                self._json(200, scheduler.runner_for(pipeline).run_all(now_ms=now))
            elif path == retrieval_api.COLLECTION:
                answer = retrieval_api.post_retrievals(pipeline, body)
                self._json(answer.status, answer.body, headers=answer.headers)

        def _sql(self, body: bytes, fmt: str, archived: str) -> None:
            if fmt not in ("json", "csv", "arrow"):
                self._bad(BadRequest("format", "format must be json, csv or arrow"))
                return
            if archived not in ("notice", "error"):
                self._bad(BadRequest("archived", "archived must be notice or error"))
                return
            try:
                sql = sql_statement(body, self.headers.get("Content-Type", ""))
            except BadRequest as exc:
                self._bad(exc)
                return
            try:
                sources = pipeline.sql_sources(sql)
                missing = left_out(sources.archived_raw, sql)
                if missing is not None and archived == "error":
                    self._json(409, {"error": missing.notice()}, headers=missing.headers())
                    return
                table = run_sql(sources, sql, memory_limit=pipeline.settings.api.sql_memory_limit,
                                spill_dir=sql_spill_dir(pipeline.settings.data_dir))
            except SqlError as exc:
                self._json(400, {"error": str(exc)})
                return
            except Exception as exc:  # the caller gets one line; the log keeps the details
                log.exception("SQL request failed")
                self._json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
                return
            notice = missing.headers() if missing is not None else None
            if fmt == "arrow":
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                self._send(200, sink.getvalue().to_pybytes(), ARROW_STREAM, notice)
            elif fmt == "csv":
                self._send(200, output.to_csv(table).encode(), "text/csv", notice)
            else:
                self._send(200, output.to_json(table).encode(), headers=notice)

    return Handler


class ApiServer:
    def __init__(self, pipeline: Pipeline, *, host: str, port: int, token: str = "") -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(pipeline, token))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="api", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
