"""An HTTP proxy in front of moto's S3 server that fails requests the way S3 does, switched
at run time (issue 14's fault suite).

moto answers every request it can. S3 does not always: it answers 500 InternalError now and
then, 503 SlowDown when a prefix gets more requests than it takes, and a connection can stall
with no answer at all. `FaultyS3` sits between a client and moto and, per its current
`mode`, answers

- `PASS`: whatever moto answers (every request is forwarded as it is);
- `INTERNAL_ERROR`: 500 with S3's `InternalError` XML body;
- `SLOW_DOWN`: 503 with S3's `SlowDown` XML body (botocore's standard retry mode counts it
  as throttling and retries it);
- `HANG`: nothing: the request is read, then the connection is held open without a byte
  of answer until `hang_s` passes or the mode changes, and then closed. A client without a
  read timeout would wait the whole time.

A fault can be limited to the next `times` matching requests (then the proxy passes again,
as a brief throttling does) and to some HTTP methods (`methods`, e.g. only writes). It counts
every request it saw and every one it failed, per mode, method and path (`failed`).
The failures never reach moto, so a request failed here changed nothing in the bucket.

Both proxies of the tests (this one and `RestoreHoldingS3` in tests/tiers/test_restore_s3.py) are
`ForwardingHandler`s served by `serve`: a `ThreadingHTTPServer` on a free port of 127.0.0.1
that forwards each request over a new connection to moto.
"""

from __future__ import annotations

import http.client
import itertools
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import ParseResult, urlparse

PASS = "pass"
INTERNAL_ERROR = "500 InternalError"
SLOW_DOWN = "503 SlowDown"
HANG = "hang"
MODES = (PASS, INTERNAL_ERROR, SLOW_DOWN, HANG)

WRITES = frozenset({"PUT", "POST", "DELETE"})

_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "proxy-connection"}
_request_ids = itertools.count(1)


def s3_error(code: str, message: str) -> bytes:
    """S3's error document (what botocore parses the code and message from)."""
    request_id = f"FAULTPROXY{next(_request_ids):06d}"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>").encode()


# What S3 itself says (its documented error codes and messages).
_ANSWERS = {
    INTERNAL_ERROR: (500, "InternalError", "We encountered an internal error. Please try again."),
    SLOW_DOWN: (503, "SlowDown", "Please reduce your request rate."),
}


class ForwardingHandler(BaseHTTPRequestHandler):
    """A request handler that reads a request whole and forwards it to `upstream` (moto's
    server) over a new connection; the proxies here decide per request what to answer."""

    protocol_version = "HTTP/1.1"
    upstream: ParseResult  # set by each proxy's subclass

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in _HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", headers.get("Content-Length", headers.get("content-length", "0")))
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1", self.upstream.port,
                                                timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, dict(response.getheaders()), data
        finally:
            connection.close()


def serve(handler: type[BaseHTTPRequestHandler], name: str) -> tuple[ThreadingHTTPServer, str]:
    """`handler` on a free port of 127.0.0.1, served by a daemon thread: (server, its URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class FaultyS3:
    """A proxy in front of moto's S3 that fails requests as the current mode says (see the
    module doc). `url` is its endpoint; `close()` stops it (and lets go of hung requests)."""

    def __init__(self, upstream: str, *, hang_s: float = 60.0) -> None:
        self.upstream = urlparse(upstream)
        self.hang_s = hang_s
        self._lock = threading.Lock()
        self._mode = PASS
        self._times: int | None = None  # matching requests left to fail; None: until switched off
        self._methods: frozenset[str] | None = None
        self._calm = threading.Event()  # set whenever the mode is not HANG: hung requests end
        self._calm.set()
        self.seen: Counter[str] = Counter()  # method -> requests seen
        self.failed: Counter[tuple[str, str, str]] = Counter()  # (mode, method, path) -> requests failed
        outer = self

        class Handler(ForwardingHandler):
            upstream = self.upstream

            def _handle(self) -> None:
                body = self._body()  # read whole first: a client that sent it waits for an answer
                mode = outer._take(self.command, urlparse(self.path).path)
                if mode == HANG:
                    # No answer at all; the client's read timeout is what ends its wait.
                    outer._calm.wait(outer.hang_s)
                    self.close_connection = True
                    return
                if mode in _ANSWERS:
                    status, code, message = _ANSWERS[mode]
                    headers = {"Content-Type": "application/xml", "x-amz-request-id": "faultproxy"}
                    return self._reply(status, headers, s3_error(code, message))
                self._reply(*self._forward(body))

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.server, self.url = serve(Handler, "faulty-s3")

    # ---- switching ----------------------------------------------------------------------
    def set(self, mode: str, *, times: int | None = None, methods: Iterable[str] | None = None) -> None:
        """From now on answer matching requests (of `methods`, or all) as `mode` says: the
        next `times` of them, or every one until the mode is changed."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None: until changed), not {times}")
        with self._lock:
            self._mode, self._times = mode, times
            self._methods = frozenset(m.upper() for m in methods) if methods is not None else None
            self._update_calm()

    def passing(self) -> None:
        """Pass every request again (and end the requests held by HANG)."""
        self.set(PASS)

    @contextmanager
    def fault(self, mode: str, *, times: int | None = None,
              methods: Iterable[str] | None = None) -> Iterator[FaultyS3]:
        """`mode` inside the block, passing after it (even when the block raises)."""
        self.set(mode, times=times, methods=methods)
        try:
            yield self
        finally:
            self.passing()

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    def _update_calm(self) -> None:
        if self._mode == HANG:
            self._calm.clear()
        else:
            self._calm.set()

    def _take(self, method: str, path: str) -> str:
        """The mode this request gets (counting it)."""
        with self._lock:
            self.seen[method] += 1
            mode = self._mode
            if mode == PASS or (self._methods is not None and method not in self._methods):
                return PASS
            if self._times is not None:
                self._times -= 1
                if self._times <= 0:  # the last failure of a limited fault: passing from now on
                    # (a limited HANG still holds this last request for `hang_s`, or until `set`)
                    self._mode, self._times = PASS, None
            self.failed[(mode, method, path)] += 1
            return mode

    # ---- what happened ------------------------------------------------------------------
    def failures(self, mode: str | None = None, method: str | None = None) -> int:
        """Requests failed (in `mode`, of `method`)."""
        with self._lock:
            return sum(n for (m, verb, _), n in self.failed.items()
                       if (mode is None or m == mode) and (method is None or verb == method))

    def most_tries(self, mode: str | None = None, method: str | None = None) -> int:
        """The most failures of one path (in `mode`, of `method`): above 1, a client retried."""
        with self._lock:
            return max((n for (m, verb, _), n in self.failed.items()
                        if (mode is None or m == mode) and (method is None or verb == method)), default=0)

    def close(self) -> None:
        with self._lock:
            self._mode, self._times = PASS, None
            self._calm.set()
        self.server.shutdown()
        self.server.server_close()
