"""The HTTP API of a running pipeline: health, metrics (JSON and Prometheus), read-only SQL,
hot series, tiers, jobs, retrievals (fabtier.retrieval_api) and alerts (fabtier.alerts_api).

FastAPI routes, served by uvicorn from a thread of the instance (`ApiServer`); a route that
does work runs in a worker thread and calls into the pipeline. The OpenAPI schema at
`/openapi.json` is generated from the routes and the models of fabtier.apimodels. Every route
but /health needs the bearer token when one is configured (401 with `WWW-Authenticate:
Bearer`). A parameter that does not fit is a 400 naming it (fabtier.apiparams), an unknown
route 404, a method a route does not take 405 with `Allow`: all with a JSON `error`.
"""

import hmac
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
import pyarrow as pa
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from analytics import output
from analytics.leftout import left_out
from analytics.session import run_sql
from core.errors import SqlError
from fabtier import alerts_api, apimodels, promexport, retrieval_api
from fabtier.apiparams import (
    MAX_BUCKET_MS,
    MAX_MINUTES,
    MAX_NOW_MS,
    MAX_POINTS,
    MIN_NOW_MS,
    PRINTABLE,
    Answer,
    BadRequest,
    from_validation,
    given_once,
    in_thread,
    request_body,
    respond,
    sql_statement,
)
from fabtier.datadir import sql_spill_dir
from lifecycle import jobs, scheduler
from lifecycle.health import Problem
from tiers.inventory import report
from tiers.store import StoreError

if TYPE_CHECKING:
    from fabtier.pipeline import Pipeline

log = logging.getLogger("fabtier.api")
ARROW_STREAM = "application/vnd.apache.arrow.stream"
TITLE, VERSION = "fabtier", "0.1.0"
_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")
_ERROR = {"model": apimodels.ErrorBody}
_LEFT_OUT_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}} for name, text in (
        ("X-Fabtier-Left-Out-Objects", "archived raw objects the answer could not read"),
        ("X-Fabtier-Left-Out-Bytes", "their bytes"),
        ("X-Fabtier-Left-Out-From", "the first hour they hold (ISO-8601 UTC)"),
        ("X-Fabtier-Left-Out-To", "the end of the last hour they hold (ISO-8601 UTC)"),
        ("X-Fabtier-Left-Out-Classes", "their storage classes"),
        ("X-Fabtier-Retrieve", "the `fabtier retrieve` command that brings them back"),
        ("X-Fabtier-Retrievals", "the open retrieval jobs that bring them back"))}


def _problems(pipeline: "Pipeline") -> list[dict]:
    """The steps failing now: the seal's (with the store's reason), then the tiering jobs'.
    The seal job's own entry only repeats the seal's, so it shows only when the seal has none
    (the job failed before any segment was tried)."""
    problems = pipeline.metrics.faults.problems()
    runner = scheduler.existing_runner(pipeline)
    if runner is not None:
        steps = {p.step for p in problems}
        problems += [p for p in runner.faults.problems() if p.step not in steps]
    found = [p.public() for p in problems]
    subscriber = pipeline.subscriber
    if subscriber is not None and subscriber.ready.is_set() and not subscriber.connected.is_set():
        # Lost after it was up (a broker restart, a network cut, a login refused since):
        # paho reconnects with backoff; nothing is taken meanwhile.
        now = int(time.time() * 1000)
        found.append(Problem(
            "broker", subscriber.problem or "disconnected from the broker; reconnecting",
            "check that the broker runs and is reachable, and [broker] username, password and TLS files if "
            "it refuses the login", since_ms=subscriber.disconnected_ms or now, last_ms=now,
            failures=max(1, subscriber.failures)).public())
    return found


def health(pipeline: "Pipeline") -> tuple[int, dict]:
    """/health: 200 when ready (the liveness answer), 503 otherwise. `status` is the run state,
    or `degraded` when ready while steps fail (`problems`); `state` is always the run state."""
    ready = pipeline.ready
    problems = _problems(pipeline)
    status = "degraded" if ready and problems else pipeline.state.value
    return (200 if ready else 503), {"status": status, "state": pipeline.state.value, "failure": pipeline.failure,
                                     "data_dir_id": pipeline.identity, "problems": problems}


def step_metrics(pipeline: "Pipeline") -> dict:
    """Failures per tiering job (`job_failures`, every job listed) and the steps failing now."""
    runner = scheduler.existing_runner(pipeline)
    counts = runner.faults.counts() if runner is not None else {}
    job_ids = [job.id for job in (runner.jobs if runner is not None else jobs.JOBS)]
    return {"job_failures": {job_id: counts.get(job_id, 0) for job_id in job_ids},
            "failing_steps": [p["step"] for p in _problems(pipeline)]}


def metrics(pipeline: "Pipeline") -> dict:
    """GET /metrics: the pipeline's counters, the unsealed readings' memory against its limit
    (backpressure starts there), and the failing steps. /metrics/prometheus shows the same."""
    return {**pipeline.metrics_snapshot(), "unsealed_bytes": pipeline.unsealed.bytes,
            "max_unsealed_bytes": pipeline.settings.ingest.max_unsealed, **step_metrics(pipeline)}


def series(pipeline: "Pipeline", machine: str, sensor: str, minutes: float, points: int) -> Answer:
    """GET /series: one sensor's recent readings from the hot ring, with the read's timings."""
    if pipeline.keys.lookup(machine, sensor) is None:
        return Answer(404, {"error": f"no sensor {sensor!r} of machine {machine!r} in the hot tier; "
                                     "GET /sensors lists them"})
    since = pipeline.clock.now_ms() - int(minutes * 60_000)
    timings: dict = {}
    ts, value = pipeline.series(machine, sensor, since_ms=since, points=points, timings=timings)
    # The ring holds every reading of the sensor from `complete_from` on: older ones were
    # pushed out by [hot] memory_budget, or came before this run (they are in SQL's tiers).
    complete_from = pipeline.series_complete_from(machine, sensor)
    return Answer(200, {"machine": machine, "sensor": sensor, "ts": ts.tolist(), "v": value.tolist(),
                        "complete_from_ms": complete_from, "shorter_than_asked": since < complete_from, **timings})


def bands(pipeline: "Pipeline", machine: str, since: int, bucket_ms: int) -> Response:
    """GET /bands: one machine's sensors since `since` as buckets, from the hot ring."""
    # No limit on the span: the answer is at most a bucket per reading the ring holds.
    rows, complete = pipeline.bands(machine, since_ms=since, bucket_ms=bucket_ms)
    # orjson: a first answer holds a window's buckets of every sensor (tens of thousands of rows)
    return respond(orjson.dumps({"machine": machine, "since_ms": since, "bucket_ms": bucket_ms,
                                 "complete": complete, "rows": rows}), "application/json", {})


# How DuckDB reports a registered Arrow source (a lake file) that failed while it was read.
_STORE_FAILED = "reading the stream registered as"


def sql_answer(pipeline: "Pipeline", body: bytes, content_type: str, fmt: str, archived: str) -> Response:
    """POST /sql: the rows as JSON (a plain array of row objects), CSV or an Arrow stream;
    what the answer leaves out (archived objects) in headers, or 409 with archived=error."""
    try:
        sql = sql_statement(body, content_type)
    except BadRequest as exc:
        return Answer(400, exc.body()).response()
    began, cpu_began = time.perf_counter(), time.thread_time()
    waits: dict[str, float] = {}
    try:
        sources = pipeline.sql_sources(sql, timings=waits)
        missing = left_out(sources.archived_raw, sql)
        if missing is not None and archived == "error":
            return Answer(409, {"error": missing.notice()}, missing.headers()).response()
        gathered = time.perf_counter()
        table = run_sql(sources, sql, memory_limit=pipeline.settings.api.sql_memory_limit,
                        spill_dir=sql_spill_dir(pipeline.settings.data_dir))
        ran = time.perf_counter()
    except StoreError as exc:  # the lake cannot be listed or read now: not the statement's fault
        log.warning("SQL request: the store failed: %s", exc)
        return Answer(503, {"error": f"the lake cannot be read now: {exc}"}).response()
    except SqlError as exc:
        if _STORE_FAILED in str(exc):  # a file of the lake failed while DuckDB read it
            log.warning("SQL request: the store failed: %s", exc)
            return Answer(503, {"error": f"the lake cannot be read now: {exc}"}).response()
        return Answer(400, {"error": str(exc)}).response()
    except Exception as exc:  # the caller gets one line; the log keeps the details
        log.exception("SQL request failed")
        return Answer(500, {"error": f"internal error: {type(exc).__name__}: {exc}"}).response()
    headers = dict(missing.headers()) if missing is not None else {}
    if fmt == "arrow":
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        body, content_type = sink.getvalue().to_pybytes(), ARROW_STREAM
    elif fmt == "csv":
        body, content_type = output.to_csv(table).encode(), "text/csv"
    else:
        body, content_type = output.to_json(table).encode(), "application/json"
    # Where the answer's time went (W3C Server-Timing: browsers' developer tools show it, and
    # `fabtier bench ingest --queries-per-s` reports it beside the round trip).
    headers["Server-Timing"] = ", ".join(
        f"{name};dur={seconds * 1000:.2f}" for name, seconds in
        (("sources", gathered - began), ("lock", waits.get("lock", 0.0)), ("locked", waits.get("locked", 0.0)),
         ("view", waits.get("view", 0.0)), ("tiers", waits.get("tiers", 0.0)), ("run", ran - gathered), ("encode", time.perf_counter() - ran),
         ("cpu", time.thread_time() - cpu_began)))  # this thread's own (DuckDB's threads are apart)
    return respond(body, content_type, headers)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the routes matching `path` take (empty: no route), found by asking each
    route whether it takes the path with each method."""
    allowed = []
    for method in _METHODS:
        scope = {"type": "http", "path": path, "root_path": "", "method": method, "path_params": {}}
        if any(route.matches(scope)[0] is Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The schema generated from the routes, once. Parameters that do not fit are a 400 here
    (not the framework's 422), so its 422 answers are left out."""
    if app.openapi_schema is None:
        schema = get_openapi(title=TITLE, version=VERSION, routes=app.routes,
                             description="fabtier's HTTP API: health, metrics, SQL over every tier, hot series, "
                                         "tiers, tiering jobs, retrievals and alerts. Every route but /health "
                                         "needs `Authorization: Bearer <token>` when `[api] token` is set.")
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def build_app(pipeline: "Pipeline", *, token: str = "") -> FastAPI:
    """The API of `pipeline`; with `token`, every route but /health needs it."""
    app = FastAPI(title=TITLE, version=VERSION, openapi_url=None, docs_url=None, redoc_url=None,
                  redirect_slashes=False)
    bearer = HTTPBearer(auto_error=False, description="`[api] token` (or FABTIER_API_TOKEN), when set")
    expected = f"Bearer {token}".encode()

    async def authorised(request: Request,
                         _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if token and not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": 'Bearer realm="fabtier"'})

    guarded = {"dependencies": [Depends(authorised)],
               "responses": {401: {"model": apimodels.ErrorBody, "description": "missing or wrong bearer token"}}}

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        return Answer(400, from_validation(list(exc.errors())).body()).response()

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        # The caller gets one line; uvicorn's log keeps the traceback.
        return Answer(500, {"error": f"internal error: {type(exc).__name__}: {exc}"}).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if exc.status_code in (404, 405):
            allowed = allowed_methods(app, path)
            if not allowed:
                return Answer(404, {"error": f"no route {path}"}).response()
            return Answer(405, {"error": f"{path} takes {', '.join(allowed)}, not {request.method}"},
                          {"Allow": ", ".join(allowed)}).response()
        return Answer(exc.status_code, {"error": str(exc.detail)}, dict(exc.headers or {})).response()

    @app.get("/health", summary="readiness and what fails", response_model=apimodels.Health, tags=["instance"],
             responses={503: {"model": apimodels.Health, "description": "not ready (the run state says why)"}},
             description="200 once the pipeline is subscribed and ready, else 503 (no token needed). "
                         "`status` is `degraded` while a step (seal, a tiering job) fails, and `problems` "
                         "says which, since when, why and the fix.")
    async def get_health() -> Response:
        status, body = health(pipeline)
        return Answer(status, body).response()

    @app.get("/", include_in_schema=False)
    async def get_root(request: Request) -> Response:
        # The operators' dashboard is a process of its own (it must not take the ingest
        # process's time), on this host at [api] dashboard_port: send a browser there.
        host = request.url.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        target = f"{request.url.scheme}://{host}:{pipeline.settings.api.dashboard_port}/"
        return Response(status_code=307, headers={"Location": target})

    router = APIRouter(**guarded)  # type: ignore[arg-type]

    @router.get("/openapi.json", include_in_schema=False)
    async def get_openapi_json() -> Response:
        return Answer(200, openapi_schema(app)).response()

    @router.get("/metrics", summary="counters (JSON)", response_model=dict[str, Any], tags=["instance"],
                description="ingest, tiering, sink and alert counters (JSON); the same figures for "
                            "Prometheus at /metrics/prometheus")
    async def get_metrics() -> Response:
        return Answer(200, await in_thread(metrics, pipeline)).response()

    @router.get("/metrics/prometheus", summary="counters for Prometheus", tags=["instance"], response_class=Response,
                responses={200: {"description": "the figures of /metrics in Prometheus' text format",
                                 "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def get_prometheus() -> Response:
        return respond(promexport.exposition(await in_thread(metrics, pipeline)), promexport.CONTENT_TYPE, {})

    @router.get("/tiers", summary="rows, bytes and cost per tier", response_model=apimodels.Tiers, tags=["tiers"],
                description="rows, bytes, oldest, newest and monthly cost per tier")
    async def get_tiers() -> Response:
        return Answer(200, report(await in_thread(pipeline.tier_rows))).response()

    @router.get("/sensors", summary="every sensor seen", response_model=list[apimodels.Sensor], tags=["tiers"],
                description="every (machine, sensor) seen")
    async def get_sensors() -> Response:
        return Answer(200, [{"machine": m, "sensor": s} for m, s in await in_thread(pipeline.sensors)]).response()

    @router.get("/series", summary="one sensor's recent readings (hot ring)", dependencies=[Depends(given_once)],
                response_model=apimodels.Series, tags=["tiers"],
                responses={400: _ERROR, 404: {**_ERROR, "description": "no such sensor in the hot tier"}},
                description="one sensor's last minutes from the hot ring, averaged into at most `points` "
                            "points, read without the ingest lock")
    async def get_series(machine: Annotated[str, Query(min_length=1)],
                         sensor: Annotated[str, Query(min_length=1)],
                         minutes: Annotated[float, Query(gt=0, le=MAX_MINUTES, allow_inf_nan=False)] = 10,
                         points: Annotated[int, Query(ge=1, le=MAX_POINTS)] = 300) -> Response:
        return (await in_thread(series, pipeline, machine, sensor, minutes, points)).response()

    @router.get("/bands", summary="one machine's recent buckets (hot ring)", dependencies=[Depends(given_once)],
                response_model=apimodels.Bands, tags=["tiers"], responses={400: _ERROR},
                description="every sensor of one machine since `since` (epoch ms) from the hot ring, as "
                            "buckets of `bucket_ms` with their min, max, mean and count (the dashboard's "
                            "min-max bands), read without the ingest lock; `complete` says whether the ring "
                            "holds every reading of that span")
    async def get_bands(machine: Annotated[str, Query(min_length=1, pattern=PRINTABLE)],
                        since: Annotated[int, Query(ge=MIN_NOW_MS, lt=MAX_NOW_MS)],
                        bucket_ms: Annotated[int, Query(ge=1, le=MAX_BUCKET_MS)] = 1000) -> Response:
        return await in_thread(bands, pipeline, machine, since, bucket_ms)

    @router.post("/sql", summary="one read-only SELECT over every tier", dependencies=[Depends(given_once)],
                 tags=["sql"], response_model=None,
                 openapi_extra=request_body(apimodels.SqlRequest, text="the statement itself"),
                 responses={200: {"description": "the rows: json a plain array of row objects (timestamps as "
                                                 "ISO-8601), csv, or an Arrow IPC stream; headers say what "
                                                 "archived objects the answer left out",
                                  "headers": _LEFT_OUT_HEADERS,
                                  "content": {"application/json": {"schema": {"type": "array", "items": {
                                                  "type": "object", "additionalProperties": True}}},
                                              "text/csv": {"schema": {"type": "string"}},
                                              ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}}},
                            400: {**_ERROR, "description": "the database's message, or a parameter that does "
                                                           "not fit"},
                            409: {**_ERROR, "description": "archived=error and archived objects hold readings "
                                                           "the answer would leave out",
                                  "headers": _LEFT_OUT_HEADERS},
                            503: {**_ERROR, "description": "the lake's store failed (its reason); try again"}},
                 description="one read-only SELECT over the views of CONTRACT.md section 4")
    async def post_sql(request: Request,
                       fmt: Annotated[Literal["json", "csv", "arrow"], Query(alias="format")] = "json",
                       archived: Annotated[Literal["notice", "error"], Query(
                           description="when archived objects hold readings the answer cannot read: answer "
                                       "with X-Fabtier-Left-Out-* headers, or 409")] = "notice") -> Response:
        body = await request.body()
        return await in_thread(sql_answer, pipeline, body, request.headers.get("Content-Type", ""), fmt, archived)

    @router.post("/lifecycle/run", summary="run every tiering job now", dependencies=[Depends(given_once)],
                 response_model=list[dict[str, Any]], tags=["jobs"],
                 responses={400: _ERROR, 503: {**_ERROR, "description": "the pipeline is not ready"}},
                 description="run every tiering job once, now; the job reports")
    async def post_lifecycle_run(now: Annotated[int | None, Query(
                                     ge=MIN_NOW_MS, lt=MAX_NOW_MS,
                                     description="epoch ms that ages are measured against")] = None) -> Response:
        if not pipeline.ready:
            return Answer(503, {"error": f"the pipeline is {pipeline.state.value}"}).response()
        return Answer(200, await in_thread(lambda: scheduler.runner_for(pipeline).run_all(now_ms=now))).response()

    app.include_router(router)
    app.include_router(retrieval_api.router(pipeline), **guarded)  # type: ignore[arg-type]
    app.include_router(alerts_api.router(pipeline), **guarded)  # type: ignore[arg-type]
    return app


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: the port is known (0: any free one) and a port in use
    fails here, as the instance starts."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class ApiServer:
    """The API served by uvicorn in a thread of its own. The socket listens from construction
    on (requests wait in its backlog until `start`); `stop` lets requests in flight finish
    for a few seconds, then closes."""

    def __init__(self, pipeline: "Pipeline", *, host: str, port: int, token: str = "") -> None:
        self.app = build_app(pipeline, token=token)
        self._socket = _listen(host, port)
        self._port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False,
                                lifespan="off", server_header=False, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="api", daemon=True)

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
