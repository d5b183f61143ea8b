"""The HTTP routes of retrieval jobs (CONTRACT.md section 5). The work is done by plain
functions that return an `Answer` (status, JSON body, headers) and do no HTTP of their own,
so that they are tested without a server; `router` puts them on the API (fabtier.api).

- `POST /retrievals`, body `{"from": T, "to": T, "machine": M, "sensor": S, "speed": SPEED}`
  (T epoch milliseconds, as the API's other times; `to` exclusive; machine, sensor and speed
  optional, speed by default `[retrieval] speed`):
  202 Accepted with the job object and `Location: /retrievals/{id}`; 400 naming the field
  that does not fit (or saying why the range cannot be restored at that speed).
- `GET /retrievals/{id}`: 200 with the job object, 404 for an unknown id.
- `GET /retrievals`: 200 with every job, oldest first.

A new job's notices (MQTT, webhook) go out from a thread of their own, so that the answer
never waits for a broker; the `retrieve` tiering job sends any that failed.
"""

import json
import logging
import threading

from fastapi import APIRouter, Request
from starlette.responses import Response

from core.errors import FabtierError
from fabtier import apimodels
from fabtier.apiparams import Answer, in_thread, request_body
from lifecycle import notify, retrievals
from lifecycle import retrieval as rt
from lifecycle.host import JobHost

log = logging.getLogger("fabtier.api")

COLLECTION = "/retrievals"
ITEM = "/retrievals/{id}"
__all__ = ["Answer", "get_retrieval", "list_retrievals", "parse_request", "post_retrievals", "router"]


def parse_request(body: bytes, default_speed: str) -> rt.Request:
    """The request in a POST body; RetrievalError naming the field that does not fit."""
    example = '{"from": 1772323200000, "to": 1772344800000, "speed": "standard"}'
    try:
        document = json.loads(body.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError):
        raise rt.RetrievalError(f"the body is not JSON; send e.g. {example}", "body") from None
    if not isinstance(document, dict):
        raise rt.RetrievalError(f"send a JSON object, e.g. {example}", "body")
    unknown = sorted(set(document) - {"from", "to", "machine", "sensor", "speed"})
    if unknown:
        raise rt.RetrievalError(f"{unknown[0]} is not a field of a retrieval request "
                                "(from, to, machine, sensor, speed)", unknown[0])
    for name in ("from", "to"):
        if name not in document:
            raise rt.RetrievalError(f"{name} is required (epoch milliseconds)", name)
    speed = document.get("speed")
    return rt.check_request(document["from"], document["to"], default_speed if speed is None else speed,
                            document.get("machine"),
                            document.get("sensor"))


def _announce(host: JobHost) -> None:
    jobs = retrievals.JobStore(host.settings.data_dir)
    threading.Thread(target=retrievals.deliver, args=(jobs, notify.build_notifiers(host.settings)),
                     name="retrieval-notices", daemon=True).start()


def post_retrievals(host: JobHost, body: bytes) -> Answer:
    try:
        request = parse_request(body, host.settings.retrieval.speed)
        job = retrievals.create(settings=host.settings, lake=host.lake,
                                jobs=retrievals.JobStore(host.settings.data_dir), request=request,
                                now_ms=host.clock.now_ms())
    except rt.RetrievalError as exc:  # a field that does not fit, or expedited over DEEP_ARCHIVE
        return Answer(400, {"error": str(exc), "parameter": exc.parameter or "body"})
    except FabtierError as exc:
        log.exception("retrieval request failed")
        return Answer(503, {"error": f"the store could not be asked: {exc}"})
    _announce(host)
    return Answer(202, job.public(), {"Location": f"{COLLECTION}/{job.id}"})


def get_retrieval(host: JobHost, path: str) -> Answer:
    job_id = path[len(COLLECTION) + 1:]
    job = retrievals.JobStore(host.settings.data_dir).load(job_id)
    if job is None:
        return Answer(404, {"error": f"no retrieval job {job_id!r}; GET /retrievals lists them"})
    return Answer(200, job.public())


def list_retrievals(host: JobHost) -> Answer:
    return Answer(200, [job.public() for job in retrievals.JobStore(host.settings.data_dir).jobs()])


def router(host: JobHost) -> APIRouter:
    """The retrieval routes of `host`'s API."""
    routes = APIRouter(tags=["retrievals"])
    error = {"model": apimodels.ErrorBody}

    @routes.post(COLLECTION, summary="restore archived readings", status_code=202,
                 response_model=apimodels.RetrievalJob,
                 openapi_extra=request_body(apimodels.RetrievalRequest),
                 responses={202: {"description": "the job, accepted", "headers": {"Location": {
                                  "description": "/retrievals/{id}", "schema": {"type": "string"}}}},
                            400: {**error, "description": "a field that does not fit, named in `parameter`"},
                            503: {**error, "description": "the store could not be asked"}},
                 description="restore the archived raw objects of a time range (asynchronously)")
    async def post(request: Request) -> Response:
        body = await request.body()
        return (await in_thread(post_retrievals, host, body)).response()

    @routes.get(COLLECTION, summary="every retrieval job", response_model=list[apimodels.RetrievalJob],
                description="every retrieval job, oldest first")
    async def get_all() -> Response:
        return (await in_thread(list_retrievals, host)).response()

    @routes.get(ITEM, summary="one retrieval job", response_model=apimodels.RetrievalJob,
                responses={404: {**error, "description": "no such job"}}, description="one retrieval job")
    async def get_one(id: str) -> Response:
        return (await in_thread(get_retrieval, host, f"{COLLECTION}/{id}")).response()

    return routes
