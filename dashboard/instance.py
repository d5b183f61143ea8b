"""The running instance's HTTP API as the dashboard uses it (README, *HTTP API*), with the
instance's bearer token. Where a route the dashboard would like is not there yet (an older
instance: `GET /alerts`, `POST /alerts/{id}/ack`), it says so once in the log and answers
from `POST /sql` or the dashboard's own acknowledgement store instead."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

import httpx

from dashboard import views
from dashboard.acks import AckStore

log = logging.getLogger("fabtier.dashboard")


class InstanceError(Exception):
    """The instance did not answer, or answered with an error (the message says which)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Instance:
    def __init__(self, base_url: str, *, token: str = "", acks: AckStore | None = None,
                 timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout,
                                         transport=transport)
        self._acks = acks
        self._routes: set[str] | None = None
        self._routes_at = 0.0
        self._said: set[str] = set()

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise InstanceError(f"the instance at {self.base_url} does not answer ({type(exc).__name__}: "
                                f"{exc})") from None

    async def _json(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kw: Any) -> Any:
        response = await self._call(method, path, **kw)
        if response.status_code not in ok:
            raise InstanceError(f"{method} {path}: {response.status_code} {_error_text(response)}",
                                response.status_code)
        return response.json()

    async def health(self) -> dict:
        # 503 carries the state: not ready is an answer, not an error.
        return await self._json("GET", "/health", ok=(200, 503))

    async def metrics(self) -> dict:
        return await self._json("GET", "/metrics")

    async def tiers(self) -> dict:
        return await self._json("GET", "/tiers")

    async def retrievals(self) -> list:
        answer = await self._json("GET", "/retrievals")
        return answer if isinstance(answer, list) else list(answer.get("jobs", answer.get("retrievals", [])))

    async def sensors(self) -> list[dict]:
        return await self._json("GET", "/sensors")

    async def series(self, machine: str, sensor: str, *, minutes: float, points: int) -> dict | None:
        """The hot ring's means; None for a sensor the hot tier does not know (404)."""
        response = await self._call("GET", "/series", params={"machine": machine, "sensor": sensor,
                                                              "minutes": minutes, "points": points})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise InstanceError(f"GET /series: {response.status_code} {_error_text(response)}", response.status_code)
        return response.json()

    async def bands(self, machine: str, *, since_ms: int, bucket_ms: int) -> list[dict] | None:
        """The hot ring's buckets of every sensor of `machine` since `since_ms` (rows as
        `views.bands_sql` answers them), read by the instance without its ingest lock and
        without SQL; None when the ring does not hold all of that span (or the instance has no
        GET /bands): ask SQL, which has every tier."""
        if "/bands" not in await self.routes():
            return None
        answer = await self._json("GET", "/bands", params={"machine": machine, "since": since_ms,
                                                           "bucket_ms": bucket_ms})
        return answer["rows"] if answer.get("complete") else None

    async def sql(self, statement: str) -> list[dict]:
        return await self._json("POST", "/sql", params={"format": "json"}, content=statement.encode(),
                                headers={"Content-Type": "text/plain; charset=utf-8"})

    async def routes(self) -> set[str]:
        """The instance's routes from its OpenAPI schema (looked up again every minute, so a
        new instance's routes are used without restarting the dashboard)."""
        if self._routes is None or time.monotonic() - self._routes_at > 60:
            try:
                schema = await self._json("GET", "/openapi.json")
                self._routes = set(schema.get("paths", {}))
            except (InstanceError, ValueError):
                self._routes = self._routes or set()
            self._routes_at = time.monotonic()
        return self._routes

    def _once(self, what: str) -> None:
        if what not in self._said:
            self._said.add(what)
            log.info("%s", what)

    async def alerts(self, *, state: str = "recent", machine: str = "", rule: str = "", lot: str = "",
                     limit: int = 200) -> list[dict]:
        """Alert events, newest first, with `ack` filled (see `views.normalise_alert`)."""
        if "/alerts" in await self.routes():
            params = {"state": state, "limit": limit, **{k: v for k, v in
                                                         (("machine", machine), ("rule", rule), ("lot", lot)) if v}}
            rows = await self._json("GET", "/alerts", params=params)
            if isinstance(rows, dict):
                rows = rows.get("alerts", [])
        else:
            self._once("the instance has no GET /alerts: alerts come from POST /sql over the alerts view")
            rows = await self.sql(views.alerts_sql(state=state, machine=machine, rule=rule, lot=lot, limit=limit))
        alerts = [views.normalise_alert(r) for r in rows]
        if self._acks is not None:
            self._acks.fill(alerts)
        return alerts

    async def ack(self, alert_id: str, *, who: str, note: str) -> dict:
        """Acknowledge through the instance's `POST /alerts/{id}/ack`; an instance without the
        route gets it kept by the dashboard (`dashboard.acks`). Returns {who, note, at, by}."""
        if "/alerts/{id}/ack" in await self.routes() or "/alerts/{alert_id}/ack" in await self.routes():
            answer = await self._json("POST", f"/alerts/{quote(alert_id, safe='')}/ack", ok=(200, 201),
                                      json={"who": who, "note": note})
            stored = answer if isinstance(answer, dict) else {}
            return {"who": stored.get("who", who), "note": stored.get("note", note) or None,
                    "at": views.epoch_ms(stored.get("at")) or int(time.time() * 1000), "by": "instance"}
        if self._acks is None:
            raise InstanceError("the instance has no POST /alerts/{id}/ack and the dashboard keeps no "
                                "acknowledgements (no data directory)", 501)
        self._once("the instance has no POST /alerts/{id}/ack: acknowledgements are kept by the dashboard")
        return {**self._acks.add(alert_id, who=who, note=note), "by": "dashboard"}


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)[:300]
    return str(body)[:300]
