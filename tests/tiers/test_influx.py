"""The InfluxDB line-protocol sink: against a real InfluxDB 1.x (Debian's `influxdb`, v1 API),
and against a strict local receiver of the v2 API (no InfluxDB 2 is installable here), which
parses every line by the line protocol's grammar and answers 429 or 400 like InfluxDB does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from fabtier.broker import free_port
from fabtier.config import settings_from_mapping
from ingest.codec import ReadingBatch
from tests.conftest import wait_for
from tiers.influx import InfluxDestination
from tiers.sinkformat import line_protocol
from tiers.sinks import SinkStats

T0 = 1_764_000_000_000


def _batch(machine, rows):
    names = sorted({s for s, _, _ in rows})
    return ReadingBatch(machine, names, np.array([names.index(s) for s, _, _ in rows], np.uint32),
                        np.array([t for _, t, _ in rows], np.int64), np.array([v for _, _, v in rows], np.float64))


def _settings(**values):
    return settings_from_mapping({"influx": {"enabled": True, **values}}, env={}).influx


def test_line_protocol_groups_sensors_by_time_and_escapes():
    batch = _batch("etch 01", [("ch1/temp", T0, 21.5), ("rf,power", T0, 300.0), ("ch1/temp", T0 + 5, 21.75)])
    assert line_protocol([batch], "fab readings") == [
        "fab\\ readings,machine=etch\\ 01 ch1/temp=21.5,rf\\,power=300.0 1764000000000",
        "fab\\ readings,machine=etch\\ 01 ch1/temp=21.75 1764000000005",
    ]


@pytest.fixture
def influxdb(tmp_path):
    binary = shutil.which("influxd")
    if binary is None:
        pytest.skip("influxd is not installed (scripts/setup.sh installs Debian's influxdb)")
    http_port, rpc_port = free_port(), free_port()
    config = tmp_path / "influxdb.conf"
    config.write_text(
        "reporting-disabled = true\n"
        f'bind-address = "127.0.0.1:{rpc_port}"\n'
        f'[meta]\ndir = "{tmp_path}/meta"\n'
        f'[data]\ndir = "{tmp_path}/data"\nwal-dir = "{tmp_path}/wal"\nquery-log-enabled = false\n'
        f'[http]\nbind-address = "127.0.0.1:{http_port}"\nlog-enabled = false\n'
        "[monitor]\nstore-enabled = false\n"
    )
    process = subprocess.Popen([binary, "-config", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}"

    def up():
        try:
            return urllib.request.urlopen(url + "/ping", timeout=1).status == 204
        except OSError:
            return False
    try:
        wait_for(up, timeout=30, what="influxd to answer")
        urllib.request.urlopen(urllib.request.Request(
            url + "/query", data=urllib.parse.urlencode({"q": "CREATE DATABASE fab"}).encode(), method="POST"))
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_readings_land_in_a_real_influxdb_v1(influxdb):
    destination = InfluxDestination(_settings(url=influxdb, api="v1", database="fab", batch_lines=2))
    stats = SinkStats()
    destination.write([_batch("etch-01", [("ch1/temp", T0, 21.5), ("rf/power", T0, 300.0),
                                          ("ch1/temp", T0 + 5, 21.75), ("ch1/temp", T0 + 9, -3.0)])], stats)
    assert stats.sent_records == 3 and stats.failed_records == stats.rejected_records == 0
    query = urllib.parse.urlencode({"db": "fab", "epoch": "ms",
                                    "q": 'SELECT "ch1/temp", "rf/power" FROM readings WHERE machine = \'etch-01\''})
    answer = json.loads(urllib.request.urlopen(f"{influxdb}/query?{query}").read())
    assert answer["results"][0]["series"][0]["values"] == [[T0, 21.5, 300.0], [T0 + 5, 21.75, None],
                                                            [T0 + 9, -3.0, None]]


def test_a_refused_point_is_reported_by_a_real_influxdb_v1(influxdb):
    # Field "t" exists as a string: a float for it is a type conflict, the other line is stored.
    urllib.request.urlopen(urllib.request.Request(
        f"{influxdb}/write?db=fab&precision=ms", data=b'readings,machine=n t="text" 1764000000000\n', method="POST"))
    destination = InfluxDestination(_settings(url=influxdb, api="v1", database="fab"))
    stats = SinkStats()
    destination.write([_batch("n", [("t", T0 + 1, 2.0)]), _batch("m", [("s", T0 + 2, 3.0)])], stats)
    assert stats.rejected_records == 1 and stats.sent_records == 1
    assert "field type conflict" in stats.rejections[0]["reason"]


LINE = re.compile(r"^(?P<m>(?:[^ ,\\]|\\[ ,\\])+),machine=(?:[^ ,=\\]|\\[ ,=\\])+ "
                  r"(?:(?:[^ ,=\\]|\\[ ,=\\])+=-?\d+(?:\.\d+)?(?:e[+-]?\d+)?,?)+ \d{13}$")


class StrictV2:
    """Accepts /api/v2/write only with org, bucket, precision=ms, the token, and valid lines."""

    def __init__(self, throttle: int = 0):
        self.lines: list[str] = []
        self.throttle = throttle
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                url = urllib.parse.urlparse(self.path)
                params = urllib.parse.parse_qs(url.query)
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                if outer.throttle:
                    outer.throttle -= 1
                    return self._answer(429, {"code": "too many requests"}, {"Retry-After": "1"})
                if (url.path != "/api/v2/write" or params != {"org": ["fab"], "bucket": ["b"], "precision": ["ms"]}
                        or self.headers.get("Authorization") != "Token s3cr3t"):
                    return self._answer(401, {"code": "unauthorized"})
                lines = body.rstrip("\n").split("\n")
                bad = [line for line in lines if not LINE.match(line)]
                if bad:
                    return self._answer(400, {"code": "invalid", "message": f"unable to parse {bad[0]!r}"})
                outer.lines.extend(lines)
                self.send_response(204)
                self.end_headers()

            def _answer(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_v2_api_with_token_and_retry_after_throttling():
    receiver = StrictV2(throttle=2)
    waits: list[float] = []
    destination = InfluxDestination(_settings(url=receiver.url, org="fab", bucket="b", token="s3cr3t"),
                                    sleep=waits.append)
    stats = SinkStats()
    destination.write([_batch("etch 01", [("ch1/temp", T0, 21.5), ("rf,power", T0, 1e-7)])], stats)
    assert waits == [1.0, 1.0] and stats.retries == 2 and stats.sent_records == 1
    assert receiver.lines == ["readings,machine=etch\\ 01 ch1/temp=21.5,rf\\,power=1e-07 1764000000000"]
    receiver.server.shutdown()


def test_the_pipeline_feeds_the_sink_after_the_log_commit(broker, influxdb, tmp_path):
    from fabtier.runner import Instance
    from tests.conftest import make_settings, mosquitto_pub

    settings = make_settings(tmp_path, broker, influx={"enabled": True, "url": influxdb, "api": "v1",
                                                       "database": "fab"})
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        mosquitto_pub(broker, "fab/etch-01", json.dumps({"ts": [now - 2000, now - 1000, now - 1000],
                                                         "sensor": ["a", "a", "b"], "v": [1.0, 2.0, 3.0]}))
        sink = instance.pipeline.sinks[0]
        wait_for(lambda: sink.stats.sent_records == 2, what="the sink to send")
        assert instance.pipeline.metrics_snapshot()["sinks"]["influx"]["sent_records"] == 2
    finally:
        instance.stop()
    query = urllib.parse.urlencode({"db": "fab", "epoch": "ms", "q": 'SELECT "a", "b" FROM readings'})
    answer = json.loads(urllib.request.urlopen(f"{influxdb}/query?{query}").read())
    assert answer["results"][0]["series"][0]["values"] == [[now - 2000, 1.0, None], [now - 1000, 2.0, 3.0]]
