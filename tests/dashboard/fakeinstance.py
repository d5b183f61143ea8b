"""A stand-in for the instance's HTTP API (httpx.MockTransport): enough of /openapi.json,
/sql, /alerts, /series and the rest for the dashboard's own tests. It records every request."""

from __future__ import annotations

import json

import httpx

NOW = 1_764_000_060_000


class FakeInstance:
    def __init__(self, *, routes: tuple[str, ...] = ("/health", "/sql"), token: str = "") -> None:
        self.routes = set(routes)
        self.token = token
        self.requests: list[httpx.Request] = []
        self.acks: dict[str, list[dict]] = {}
        self.alerts = [{"id": "w0:2", "machine": "etch-01", "sensor": "ch1/temp", "rule": "hot", "state": "raised",
                        "ts": NOW - 5000, "raised_at": NOW - 4990, "value": 91.0, "kind": "high", "threshold": 80.0,
                        "seq": 2},
                       {"id": "w0:1", "machine": "cvd-01", "sensor": "ch1/temp", "rule": "hot", "state": "cleared",
                        "ts": NOW - 9000, "raised_at": NOW - 8990, "value": 70.0, "kind": "high", "threshold": 80.0,
                        "seq": 1}]
        self.transport = httpx.MockTransport(self.handle)
        self.ring_complete = True  # what GET /bands says of the span asked for

    BANDS = [{"sensor": "ch1/temp", "t": NOW - 2000, "mn": 58.0, "mx": 63.0, "av": 60.0, "n": 25},
             {"sensor": "ch1/temp", "t": NOW - 1000, "mn": 58.5, "mx": 64.0, "av": 60.5, "n": 25}]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if self.token and path != "/health" and request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json={"error": "missing or wrong bearer token"})
        if path == "/openapi.json":
            return httpx.Response(200, json={"paths": {r: {} for r in self.routes}})
        if path == "/health":
            return httpx.Response(200, json={"status": "ready", "state": "ready", "problems": []})
        if path == "/metrics":
            return httpx.Response(200, json={"readings_stored": 1000, "backpressure": False, "unsealed_rows": 10})
        if path == "/tiers":
            return httpx.Response(200, json={"tiers": [], "total_usd_per_month": 0})
        if path == "/retrievals":
            return httpx.Response(200, json=[])
        if path == "/sensors":
            return httpx.Response(200, json=[{"machine": "etch-01", "sensor": "ch1/temp"}])
        if path == "/series":
            return httpx.Response(200, json={"ts": [NOW - 1000, NOW], "v": [1.0, 2.0]})
        if path == "/alerts" and "/alerts" in self.routes:
            rows = [{**a, "acks": self.acks.get(a["id"], []), "acked": a["id"] in self.acks} for a in self.alerts]
            if request.url.params.get("state") == "open":
                rows = [r for r in rows if r["state"] == "raised"]
            return httpx.Response(200, json=rows)
        if path.startswith("/alerts/") and path.endswith("/ack") and "/alerts/{id}/ack" in self.routes:
            alert_id = path.removeprefix("/alerts/").removesuffix("/ack")
            body = json.loads(request.content)
            ack = {"alert_id": alert_id, "who": body["who"], "at": NOW, "note": body.get("note", "")}
            self.acks.setdefault(alert_id, []).append(ack)
            return httpx.Response(200, json=ack)
        if path == "/bands" and "/bands" in self.routes:
            return httpx.Response(200, json={"machine": request.url.params["machine"], "complete": self.ring_complete,
                                             "since_ms": int(request.url.params["since"]),
                                             "bucket_ms": int(request.url.params["bucket_ms"]),
                                             "rows": self.BANDS if self.ring_complete else self.BANDS[1:]})
        if path == "/sql":
            return httpx.Response(200, json=self.sql(request.content.decode()))
        return httpx.Response(404, json={"error": f"no route {path}"})

    def sql(self, statement: str) -> list[dict]:
        if "FROM alerts" in statement:
            rows = self.alerts
            if "state = 'raised'" in statement:
                rows = [a for a in rows if a["state"] == "raised"]
            return rows
        if "FROM recipe_limits" in statement:
            return [{"recipe": "R", "version": "1", "step_no": 1, "step": "heat", "step_start_s": 0,
                     "step_end_s": 600, "settle_s": 0, "kind": "temp", "low": 55.0, "high": 65.0}]
        if "FROM lot_runs" in statement:
            run = {"lot": "L1", "wafer": "W01", "recipe": "R", "recipe_version": "1", "start_ms": NOW - 100_000,
                   "end_ms": None}
            return [{"machine": "etch-01", **run}] if "QUALIFY" in statement else [run]
        if "min(value)" in statement:
            return [{"sensor": "ch1/temp", "t": NOW - 2000, "mn": 59.0, "mx": 61.0, "av": 60.0, "n": 20},
                    {"sensor": "ch1/temp", "t": NOW - 1000, "mn": 59.5, "mx": 62.0, "av": 60.5, "n": 20}]
        if "max(ts)" in statement:
            return [{"machine": "etch-01", "last_ms": NOW - 50}]
        return []

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]
