"""The HTTP API of a running pipeline: health, metrics, read-only SQL, hot series, jobs.

Standard library only (ThreadingHTTPServer): the API is a thin adapter, and every request
that does work calls into the pipeline. Every route but /health needs the bearer token when
one is configured.
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
from analytics.session import run_sql
from core.errors import SqlError
from fabtier.datadir import sql_spill_dir
from lifecycle import scheduler

if TYPE_CHECKING:
    from fabtier.pipeline import Pipeline

log = logging.getLogger("fabtier.api")
ARROW_STREAM = "application/vnd.apache.arrow.stream"

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "fabtier", "version": "0.1.0"},
    "paths": {
        "/health": {"get": {"summary": "200 once the pipeline is subscribed and ready, else 503",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "ingest and tiering counters",
                             "responses": {"200": {"description": "JSON object of counters"}}}},
        "/sql": {"post": {
            "summary": "one read-only SELECT over the views of CONTRACT.md section 4",
            "parameters": [{"name": "format", "in": "query",
                            "schema": {"type": "string", "enum": ["json", "csv", "arrow"]}}],
            "requestBody": {"content": {"text/plain": {"schema": {"type": "string"}},
                                        "application/json": {"schema": {"type": "object",
                                                             "properties": {"sql": {"type": "string"}}}}}},
            "responses": {"200": {"description": "rows"}, "400": {"description": "the database's message"}}}},
        "/series": {"get": {
            "summary": "one sensor's last minutes from the hot ring, averaged into at most `points` points",
            "parameters": [{"name": n, "in": "query", "schema": {"type": t}} for n, t in
                           (("machine", "string"), ("sensor", "string"), ("minutes", "number"), ("points", "integer"))],
            "responses": {"200": {"description": "{ts: [...], v: [...], query_us, wait_us, fell_back, "
                                                  "gil_wait_us}: the ring's answer time, the part of it spent "
                                                  "waiting for the ingest lock, whether it did, and the wait for "
                                                  "the interpreter lock before the read"}}}},
        "/tiers": {"get": {"summary": "rows, bytes, oldest, newest and monthly cost per tier",
                           "responses": {"200": {"description": "{tiers: [...], total_usd_per_month}"}}}},
        "/sensors": {"get": {"summary": "every (machine, sensor) seen", "responses": {"200": {"description": "list"}}}},
        "/lifecycle/run": {"post": {"summary": "run every tiering job once, now",
                                    "parameters": [{"name": "now", "in": "query", "schema": {"type": "integer"},
                                                    "description": "epoch ms that ages are measured against"}],
                                    "responses": {"200": {"description": "job reports"}}}},
    },
}


def _handler(pipeline: Pipeline, token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fabtier"

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: object) -> None:
            self._send(status, json.dumps(value, default=str).encode())

        def _authorised(self) -> bool:
            if not token:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
            self._json(401, {"error": "missing or wrong bearer token"})
            return False

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/health":
                ready = pipeline.ready
                self._json(200 if ready else 503, {"status": pipeline.state.value, "failure": pipeline.failure})
                return
            if not self._authorised():
                return
            if url.path == "/metrics":
                self._json(200, pipeline.metrics_snapshot())
            elif url.path == "/openapi.json":
                self._json(200, OPENAPI)
            elif url.path == "/tiers":
                from tiers.inventory import report
                self._json(200, report(pipeline.tier_rows()))
            elif url.path == "/sensors":
                self._json(200, [{"machine": m, "sensor": s} for m, s in pipeline.sensors()])
            elif url.path == "/series":
                self._series(parse_qs(url.query))
            else:
                self._json(404, {"error": f"no route {url.path}"})

        def _series(self, query: dict[str, list[str]]) -> None:
            try:
                machine, sensor = query["machine"][0], query["sensor"][0]
                minutes = float(query.get("minutes", ["10"])[0])
                points = int(query.get("points", ["300"])[0])
            except (KeyError, ValueError):
                self._json(400, {"error": "give machine, sensor, and optionally minutes (number) and points (integer)"})
                return
            since = pipeline.clock.now_ms() - int(minutes * 60_000)
            timings: dict = {}
            ts, value = pipeline.series(machine, sensor, since_ms=since, points=points, timings=timings)
            self._json(200, {"machine": machine, "sensor": sensor, "ts": ts.tolist(), "v": value.tolist(),
                             **timings})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            if not self._authorised():
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if url.path == "/sql":
                self._sql(body, parse_qs(url.query).get("format", ["json"])[0])
            elif url.path == "/lifecycle/run":
                if not pipeline.ready:
                    self._json(503, {"error": f"the pipeline is {pipeline.state.value}"})
                    return
                now = parse_qs(url.query).get("now", [None])[0]
                if now is not None and not now.lstrip("-").isdigit():
                    self._json(400, {"error": "now must be epoch milliseconds"})
                    return
                self._json(200, scheduler.runner_for(pipeline).run_all(now_ms=None if now is None else int(now)))
            else:
                self._json(404, {"error": f"no route {url.path}"})

        def _sql(self, body: bytes, fmt: str) -> None:
            if fmt not in ("json", "csv", "arrow"):
                self._json(400, {"error": "format must be json, csv or arrow"})
                return
            sql = body.decode("utf-8", errors="replace")
            if self.headers.get("Content-Type", "").startswith("application/json"):
                try:
                    sql = json.loads(sql)["sql"]
                except (ValueError, KeyError, TypeError):
                    self._json(400, {"error": 'send {"sql": "SELECT ..."} or the statement as text/plain'})
                    return
            try:
                table = run_sql(pipeline.sql_sources(), sql, memory_limit=pipeline.settings.api.sql_memory_limit,
                                spill_dir=sql_spill_dir(pipeline.settings.data_dir))
            except SqlError as exc:
                self._json(400, {"error": str(exc)})
                return
            except Exception as exc:  # the caller gets one line; the log keeps the details
                log.exception("SQL request failed")
                self._json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
                return
            if fmt == "arrow":
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                self._send(200, sink.getvalue().to_pybytes(), ARROW_STREAM)
            elif fmt == "csv":
                self._send(200, output.to_csv(table).encode(), "text/csv")
            else:
                self._send(200, output.to_json(table).encode())

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
