"""The HTTP routes of alerts: the list of open or recent alerts with their acknowledgements,
and acknowledging one (alerts.acks keeps it, durably; SQL shows it in `alert_acks`).

- `GET /alerts?state=open|recent&machine=&rule=&lot=&limit=`: `open` (the default): the
  alerts whose last event, per machine, sensor and rule, is `raised` (not cleared yet);
  `recent`: every event. Newest first (by `raised_at`), at most `limit` (100). Each is the
  event as published (epoch ms times) with `acked` and `acks` (who, at, note; oldest first).
- `POST /alerts/{id}/ack`, body `{"who": str, "note": str}` (`id` the `alerts` view's,
  `writer:seq`): 200 with the acknowledgement as stored (`alert_id`, `who`, `at`, `note`); an
  id no alert has is a 404, a body that does not fit a 400 naming the field.

As retrieval_api, the work is done by plain functions returning an `Answer`.
"""

import json
import logging
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from alerts import acks
from analytics.session import run_sql
from core.errors import SqlError
from fabtier import apimodels
from fabtier.apiparams import MAX_ALERTS, PRINTABLE, Answer, given_once, in_thread, request_body
from fabtier.datadir import sql_spill_dir

if TYPE_CHECKING:
    import pyarrow as pa

    from fabtier.pipeline import Pipeline

log = logging.getLogger("fabtier.api")

# The event as published (CONTRACT.md section 3 and its extensions), times in epoch ms.
_EVENT = """id, machine, sensor, epoch_ms(ts) AS ts, value, kind, threshold, rule, state,
  epoch_ms(raised_at) AS raised_at, flapping, note, lot, wafer, recipe, recipe_version, step, seq"""
_ACKS = """SELECT alert_id, list({'who': who, 'at': epoch_ms("at"), 'note': note} ORDER BY "at") AS acks
  FROM alert_acks GROUP BY alert_id"""


def _literal(text: str) -> str:
    # Values are checked to hold no control characters; DuckDB's strings know no backslash escapes.
    return "'" + text.replace("'", "''") + "'"


def alerts_statement(*, state: str, machine: str | None = None, rule: str | None = None,
                     lot: str | None = None, limit: int = 100) -> str:
    """The SQL of GET /alerts (over the `alerts` and `alert_acks` views)."""
    where = [f"{name} = {_literal(value)}" for name, value in (("machine", machine), ("rule", rule))
             if value is not None]
    events = ("SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
              + " QUALIFY row_number() OVER (PARTITION BY id) = 1")  # a repeated event counts once
    if state == "open":
        events = (f"SELECT * FROM ({events}) QUALIFY row_number() OVER (PARTITION BY machine, sensor, rule "
                  "ORDER BY raised_at DESC, ts DESC, seq DESC) = 1")
        outer = ["state = 'raised'"]
    else:
        outer = []
    if lot is not None:
        outer.append(f"lot = {_literal(lot)}")
    return (f"SELECT {_EVENT}, coalesce(k.acks, []) AS acks FROM ({events}) e "
            f"LEFT JOIN ({_ACKS}) k ON k.alert_id = e.id"
            + (" WHERE " + " AND ".join(outer) if outer else "")
            + f" ORDER BY raised_at DESC, seq DESC LIMIT {int(limit)}")


def _run(pipeline: "Pipeline", sql: str) -> "pa.Table":
    return run_sql(pipeline.sql_sources(sql), sql, memory_limit=pipeline.settings.api.sql_memory_limit,
                   spill_dir=sql_spill_dir(pipeline.settings.data_dir))


def list_alerts(pipeline: "Pipeline", *, state: str = "open", machine: str | None = None, rule: str | None = None,
                lot: str | None = None, limit: int = 100) -> Answer:
    try:
        rows = _run(pipeline, alerts_statement(state=state, machine=machine, rule=rule, lot=lot,
                                               limit=limit)).to_pylist()
    except SqlError as exc:  # not the caller's mistake: the parameters were checked
        log.error("GET /alerts failed: %s", exc)
        return Answer(500, {"error": f"internal error: {exc}"})
    return Answer(200, [{**row, "acked": bool(row["acks"])} for row in rows])


def alert_exists(pipeline: "Pipeline", alert_id: str) -> bool:
    parts = acks.split_alert_id(alert_id)
    if parts is None:
        return False
    sql = f"SELECT count(*) AS n FROM alerts WHERE seq = {parts[1]} AND id = {_literal(alert_id)}"
    return bool(_run(pipeline, sql).column("n")[0].as_py())


def acknowledge(pipeline: "Pipeline", alert_id: str, body: bytes) -> Answer:
    """POST /alerts/{id}/ack: checked, then appended and fsynced, then answered."""
    try:
        document = json.loads(body.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError):
        return Answer(400, {"error": 'the body is not JSON; send e.g. {"who": "jane", "note": "chiller reset"}',
                            "parameter": "body"})
    try:
        who, note = acks.check_request(document)
    except acks.AckError as exc:
        return Answer(400, {"error": str(exc), "parameter": exc.field})
    if not alert_exists(pipeline, alert_id):
        return Answer(404, {"error": f"no alert {alert_id!r}; GET /alerts lists them (`id`)"})
    ack = acks.Ack(alert_id, who, pipeline.clock.now_ms(), note)
    acks.AckLog.of(pipeline.settings.data_dir).append(ack)
    log.info("alert %s acknowledged by %s", alert_id, who)
    return Answer(200, ack.public())


def router(pipeline: "Pipeline") -> APIRouter:
    """The alert routes of `pipeline`'s API."""
    routes = APIRouter(tags=["alerts"])
    error = {"model": apimodels.ErrorBody}
    Text = Annotated[str | None, Query(pattern=PRINTABLE)]

    @routes.get("/alerts", summary="open or recent alerts", dependencies=[Depends(given_once)],
                response_model=list[apimodels.Alert], responses={400: error},
                description="open alerts (raised, not cleared) or recent alert events, newest first, with "
                            "their acknowledgements")
    async def get_alerts(state: Annotated[Literal["open", "recent"], Query()] = "open",
                         machine: Text = None, rule: Text = None, lot: Text = None,
                         limit: Annotated[int, Query(ge=1, le=MAX_ALERTS)] = 100) -> Response:
        return (await in_thread(lambda: list_alerts(pipeline, state=state, machine=machine, rule=rule, lot=lot,
                                                    limit=limit))).response()

    @routes.post("/alerts/{id}/ack", summary="acknowledge an alert", response_model=apimodels.Ack,
                 openapi_extra=request_body(apimodels.AckRequest),
                 responses={400: {**error, "description": "a field that does not fit, named in `parameter`"},
                            404: {**error, "description": "no alert has this id"}},
                 description="acknowledge an alert (`id` as in GET /alerts and the `alerts` view): kept "
                             "durably, in SQL as `alert_acks`")
    async def post_ack(id: str, request: Request) -> Response:
        body = await request.body()
        return (await in_thread(acknowledge, pipeline, id, body)).response()

    return routes
