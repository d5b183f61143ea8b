"""InfluxDB line protocol over HTTP as a sink: Amazon Timestream for InfluxDB, or any InfluxDB.

`[influx] api = "v2"` posts to `/api/v2/write?org=..&bucket=..&precision=ms` with
`Authorization: Token ..` (InfluxDB 2.x, 3.x and Timestream for InfluxDB); `"v1"` posts to
`/write?db=..&precision=ms` (InfluxDB 1.x; a token "user:password" is sent as basic auth).
429 and 5xx answers are retried with backoff (honouring Retry-After); any other 4xx means
the server refused lines of the request: they are counted as rejected with the server's
message, and not sent again (InfluxDB stores the valid lines of a partially bad request).
"""

from __future__ import annotations

import base64
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from core.settings import InfluxSettings
from ingest.codec import ReadingBatch
from tiers.sinkformat import line_protocol
from tiers.sinks import SinkStats, backoff_seconds

log = logging.getLogger("fabtier.sinks")


def _dropped(message: str, lines: int) -> int:
    """How many lines a refusal names as dropped ("partial write: ... dropped=N"), else all."""
    marker = message.rfind("dropped=")
    if marker >= 0:
        digits = "".join(c for c in message[marker + 8:marker + 20] if c.isdigit())
        if digits:
            return min(lines, int(digits))
    return lines


class InfluxDestination:
    name = "influx"

    def __init__(self, settings: InfluxSettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        base = settings.url.rstrip("/")
        if settings.api == "v2":
            query = urllib.parse.urlencode({"org": settings.org, "bucket": settings.bucket, "precision": "ms"})
            self.write_url = f"{base}/api/v2/write?{query}"
        else:
            query = urllib.parse.urlencode({"db": settings.database, "precision": "ms"})
            self.write_url = f"{base}/write?{query}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        token = self.settings.token.reveal()
        if token and self.settings.api == "v2":
            headers["Authorization"] = f"Token {token}"
        elif token:
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        return headers

    def prepare(self) -> None:
        """Nothing to create: the bucket (v2) or database (v1) belongs to the server's owner."""

    def write(self, batches: list[ReadingBatch], stats: SinkStats) -> None:
        lines = line_protocol(batches, self.settings.measurement)
        size = self.settings.batch_lines
        for start in range(0, len(lines), size):
            self._post(lines[start:start + size], stats)

    def _post(self, lines: list[str], stats: SinkStats) -> None:
        body = ("\n".join(lines) + "\n").encode()
        for attempt in range(self.settings.max_attempts):
            wait = backoff_seconds(attempt)
            request = urllib.request.Request(self.write_url, data=body, method="POST", headers=self._headers())
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                stats.sent_records += len(lines)
                return
            except urllib.error.HTTPError as exc:
                message = exc.read().decode("utf-8", "replace")[:500]
                if exc.code == 429 or exc.code >= 500:
                    stats.last_error = f"HTTP {exc.code} (attempt {attempt + 1}): {message}"
                    retry_after = exc.headers.get("Retry-After", "")
                    if retry_after.isdigit():
                        wait = min(float(retry_after), 60.0)
                else:
                    dropped = _dropped(message, len(lines))
                    stats.rejected_records += dropped
                    stats.sent_records += len(lines) - dropped
                    stats.rejections.append({"machine": None, "time": None,
                                             "reason": f"HTTP {exc.code}: {message}"})
                    stats.last_error = f"HTTP {exc.code}: {message}"
                    log.warning("InfluxDB refused a write of %d line(s): HTTP %d %s", len(lines), exc.code, message)
                    return
            except (urllib.error.URLError, OSError) as exc:
                stats.last_error = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < self.settings.max_attempts:
                stats.retries += 1
                self._sleep(wait)
        stats.failed_records += len(lines)
        log.error("InfluxDB: gave up on %d line(s): %s", len(lines), stats.last_error)
