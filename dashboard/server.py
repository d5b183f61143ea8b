"""`fabtier dashboard`: the dashboard process. It binds its port first (so the URL it prints
is one that answers), then serves the app with uvicorn until SIGINT/SIGTERM. It reads the
instance of the configuration (`[api]`, its token) and the broker's alert topic
(`[broker]`); it never touches the data directory except for `dashboard/acks.jsonl`, the
acknowledgements it keeps for an instance without an ack route."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
from starlette.types import ASGIApp

from core.errors import UserError
from core.settings import Settings
from dashboard.acks import AckStore
from dashboard.alertfeed import AlertFeed
from dashboard.app import create_app
from dashboard.instance import Instance
from dashboard.live import Live

log = logging.getLogger("fabtier.dashboard")


def instance_url(settings: Settings) -> str:
    host = settings.api.host
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: reach it on this machine
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api.port}"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"dashboard: cannot listen on {host}:{port} ({exc.strerror}); give another --port "
                        "(0: any free port)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def build(settings: Settings) -> tuple[Live, ASGIApp]:
    """The app and its live state for `settings` (without serving it)."""
    token = settings.api.token.reveal()
    instance = Instance(instance_url(settings), token=token,
                        acks=AckStore(settings.data_dir / "dashboard" / "acks.jsonl"))
    live = Live(instance, hot_window_s=settings.hot.window)
    feed_box: dict[str, AlertFeed] = {}

    def on_startup() -> None:
        loop = asyncio.get_running_loop()
        feed = AlertFeed(settings.broker,
                         on_alert=lambda event: loop.call_soon_threadsafe(live.on_alert, event),
                         on_state=lambda up: loop.call_soon_threadsafe(live.on_broker, up))
        feed_box["feed"] = feed.start()

    def on_shutdown() -> None:
        if "feed" in feed_box:
            feed_box.pop("feed").stop()

    app = create_app(live, token=token, on_startup=on_startup, on_shutdown=on_shutdown)
    return live, app


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8090, announce=print) -> int:
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    live, app = build(settings)
    announce(f"fabtier dashboard: {url} (instance {live.instance.base_url}"
             f"{', token required' if settings.api.token.reveal() else ''})")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
