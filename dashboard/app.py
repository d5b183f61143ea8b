"""The dashboard's web app (Starlette on uvicorn): five pages, their data as JSON and as
server-sent event streams, the login, the dashboard's own static files and uPlot.

Access: with `[api] token` set, every page and all data need a session cookie (set by the
login page after it was given that token; it holds an HMAC of the token, not the token, and
is HTTP-only and SameSite=Strict) or the same `Authorization: Bearer` header the instance
takes; without a token the dashboard is open, as the instance is. Nothing is loaded from
another host: uPlot comes from the npm install of scripts/setup.sh, served from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from dashboard.instance import InstanceError
from dashboard.live import Live

log = logging.getLogger("fabtier.dashboard")
HERE = Path(__file__).parent
COOKIE = "fabtier_dashboard"
SESSION_S = 12 * 3600
OPEN_PATHS = ("/login", "/static/", "/favicon.ico")
UPLOT_FILES = {"uPlot.iife.min.js": "application/javascript", "uPlot.min.css": "text/css"}


def uplot_dir() -> Path | None:
    """Where scripts/setup.sh put uPlot (`npm install --prefix .dashboard-vendor uplot@1`):
    beside the source tree, or in the current directory."""
    for root in (HERE.parent, Path.cwd()):
        candidate = root / ".dashboard-vendor" / "node_modules" / "uplot" / "dist"
        if (candidate / "uPlot.iife.min.js").is_file():
            return candidate
    return None


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"fabtier-dashboard-session-v1", hashlib.sha256).hexdigest()


class TokenGate:
    """Every route but the login and the static files needs the session cookie or the bearer
    token when a token is configured. Pages without it go to the login; data gets 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.allowed(request):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(("/api/", "/events/")):
            response: Response = JSONResponse({"error": "log in first (or send Authorization: Bearer <token>)"},
                                              status_code=401, headers={"WWW-Authenticate": 'Bearer realm="fabtier"'})
        else:
            target = path + (("?" + scope["query_string"].decode()) if scope.get("query_string") else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        await response(scope, receive, send)

    def allowed(self, request: Request) -> bool:
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), session_value(self.token).encode()):
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())


def _safe_next(target: str) -> str:
    """Only a path of this site: never an absolute URL or `//host` (open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def create_app(live: Live, *, token: str = "", on_startup=None, on_shutdown=None, title: str = "fabtier") -> ASGIApp:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    vendor = uplot_dir()
    if vendor is None:
        log.warning("uPlot is not installed: charts will not draw; run scripts/setup.sh "
                    "(npm install --prefix .dashboard-vendor uplot@1)")

    def page(name: str, **context: object):
        async def endpoint(request: Request) -> Response:
            return templates.TemplateResponse(request, name, {
                "title": title, "page": name.removesuffix(".html"), "uplot": vendor is not None,
                "token_set": bool(token), **context, **request.path_params})
        return endpoint

    async def login_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "login.html", {
            "title": title, "page": "login", "next": _safe_next(request.query_params.get("next", "/")),
            "error": None, "token_set": bool(token), "uplot": False})

    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = form.get("token", [""])[0]
        target = _safe_next(form.get("next", ["/"])[0])
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            await asyncio.sleep(0.5)  # slows guessing
            return templates.TemplateResponse(request, "login.html", {
                "title": title, "page": "login", "next": target, "error": "That is not the instance's token.",
                "token_set": True, "uplot": False}, status_code=401)
        response = RedirectResponse(target, status_code=303)
        if token:
            response.set_cookie(COOKIE, session_value(token), max_age=SESSION_S, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    def stream(channel_of):
        async def endpoint(request: Request) -> Response:
            channel = channel_of(request)

            async def events() -> AsyncIterator[bytes]:
                async for message in live.watch(channel):
                    yield message
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return endpoint

    async def api_alerts(request: Request) -> Response:
        q = request.query_params
        state = q.get("state", "recent")
        if state not in ("open", "recent"):
            return JSONResponse({"error": "state must be open or recent", "parameter": "state"}, status_code=400)
        try:
            limit = int(q.get("limit", "200"))
        except ValueError:
            return JSONResponse({"error": "limit must be a whole number", "parameter": "limit"}, status_code=400)
        try:
            rows = await live.instance.alerts(state=state, machine=q.get("machine", ""), rule=q.get("rule", ""),
                                              lot=q.get("lot", ""), limit=max(1, min(limit, 5000)))
        except InstanceError as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        return JSONResponse(rows)

    async def api_ack(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not str(body.get("who", "")).strip():
            return JSONResponse({"error": "give {\"who\": \"<your name>\", \"note\": \"...\"}", "parameter": "who"},
                                status_code=400)
        try:
            ack = await live.ack(request.path_params["alert_id"], str(body["who"]).strip()[:200],
                                 str(body.get("note") or "").strip()[:2000])
        except InstanceError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status if exc.status in (400, 404, 409) else 502)
        return JSONResponse({"id": request.path_params["alert_id"], "ack": ack})

    async def api_snapshot(request: Request) -> Response:
        """The current state of a channel as JSON (what its stream starts with)."""
        channel = request.path_params["channel"]
        if channel == "machine":
            channel = "machine:" + request.query_params.get("machine", "")
        try:
            feed = live.feed(channel)
        except KeyError:
            return JSONResponse({"error": f"no channel {channel}"}, status_code=404)
        if not feed.ready.is_set():
            await feed.poll()
            feed.ready.set()
        return Response(b"[" + b",".join(_data_of(m) for m in feed.snapshot()) + b"]",
                        media_type="application/json")

    async def uplot(request: Request) -> Response:
        name = request.path_params["name"]
        if vendor is None or name not in UPLOT_FILES:
            return JSONResponse({"error": "uPlot is not installed here; run scripts/setup.sh"}, status_code=404)
        return FileResponse(vendor / name, media_type=UPLOT_FILES[name], headers={"Cache-Control": "max-age=3600"})

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", page("overview.html")),
        Route("/machine/{machine:path}", page("machine.html")),
        Route("/alerts", page("alerts.html")),
        Route("/tiers", page("tiers.html")),
        Route("/health", page("health.html")),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["GET", "POST"]),
        Route("/events/overview", stream(lambda r: "overview")),
        Route("/events/alerts", stream(lambda r: "alerts")),
        Route("/events/status", stream(lambda r: "status")),
        Route("/events/machine/{machine:path}", stream(lambda r: "machine:" + r.path_params["machine"])),
        Route("/api/alerts", api_alerts),
        Route("/api/alerts/{alert_id:path}/ack", api_ack, methods=["POST"]),
        Route("/api/snapshot/{channel}", api_snapshot),
        Route("/vendor/uplot/{name}", uplot),
        Route("/favicon.ico", favicon),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                on_shutdown()
            await live.instance.close()

    return TokenGate(Starlette(routes=routes, lifespan=lifespan), token)


def _data_of(message: bytes) -> bytes:
    """The JSON of one encoded server-sent event (`event: x\\ndata: {...}\\n\\n`)."""
    for line in message.split(b"\n"):
        if line.startswith(b"data: "):
            return line[6:]
    return b"null"
