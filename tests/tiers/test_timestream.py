"""The Timestream sink against moto's server, over real HTTP.

moto stores what it is sent but neither throttles nor rejects records, and its CreateDatabase
and CreateTable silently replace an existing database or table (with its records) where
Timestream answers ConflictException. So the requests pass through a small proxy
(`FaultyTimestream`) that answers like Timestream does where moto cannot: ConflictException
for a database or table that exists, ThrottlingException for the first N WriteRecords calls,
and RejectedRecordsException for records more than 15 minutes in the future (Timestream's
own rule), after forwarding the valid records of the request to moto.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from fabtier.broker import free_port
from fabtier.config import settings_from_mapping
from ingest.codec import ReadingBatch
from tiers.sinkformat import timestream_requests
from tiers.sinks import SinkQueue, SinkStats
from tiers.timestream import TimestreamDestination

T0 = 1_764_000_000_000
PREFIX = "Timestream_20181101."
WRITE = PREFIX + "WriteRecords"


def _backend():
    from moto.timestreamwrite.models import timestreamwrite_backends
    return timestreamwrite_backends["123456789012"]["us-east-1"]


def _exists(target: str, request: dict) -> bool:
    """True when Timestream would refuse this create: the database or table exists (moto's
    server runs in this process, so its state is read directly)."""
    databases = _backend().databases
    if target == PREFIX + "CreateDatabase":
        return request["DatabaseName"] in databases
    if target == PREFIX + "CreateTable":
        database = databases.get(request["DatabaseName"])
        return database is not None and request["TableName"] in database.tables
    return False


class FaultyTimestream:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.throttle = 0
        self.writes: list[int] = []  # records per WriteRecords request that reached moto
        self.calls: list[str] = []  # the operations asked for, in order ("CreateTable", ...)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                target = self.headers.get("X-Amz-Target", "")
                outer.calls.append(target.removeprefix(PREFIX))
                rejected = []
                if _exists(target, json.loads(body or b"{}")):
                    return self._answer(400, {"__type": "ConflictException",
                                              "message": "Timestream was unable to process this request "
                                                         "because it contains resource that already exists."})
                if target == WRITE:
                    if outer.throttle > 0:
                        outer.throttle -= 1
                        return self._answer(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
                    request = json.loads(body)
                    horizon = int(time.time() * 1000) + 15 * 60_000
                    keep = []
                    for index, record in enumerate(request["Records"]):
                        if int(record["Time"]) > horizon:
                            rejected.append({"RecordIndex": index,
                                             "Reason": "The record timestamp is outside the time range of the data ingestion window."})
                        else:
                            keep.append(record)
                    request["Records"] = keep
                    outer.writes.append(len(keep))
                    body = json.dumps(request).encode()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "host")}
                forwarded = urllib.request.Request(outer.upstream + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(forwarded) as response:
                        status, data = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                if rejected:
                    return self._answer(400, {"__type": "RejectedRecordsException",
                                                                "message": "One or more records have been rejected.",
                                                                "RejectedRecords": rejected})
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def timestream(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # moto's backends live in this process and outlive a server: start from no database.
    _backend().reset()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proxy = FaultyTimestream(f"http://127.0.0.1:{port}")
    yield proxy
    proxy.close()
    server.stop()


def _settings(endpoint: str, **extra):
    return settings_from_mapping({"timestream": {"enabled": True, "endpoint_url": endpoint,
                                                 "database": "fab", "table": "readings", **extra}}, env={}).timestream


def _batch(machine: str, ts: list[int], sensors: list[str] | None = None) -> ReadingBatch:
    sensors = sensors or ["ch1/temp"] * len(ts)
    names = sorted(set(sensors))
    return ReadingBatch(machine, names, np.array([names.index(s) for s in sensors], np.uint32),
                        np.array(ts, np.int64), np.arange(len(ts), dtype=np.float64) + 0.25)


def _stored(destination) -> list[dict]:
    return _backend().databases["fab"].tables["readings"].records


def test_requests_are_multi_measure_with_common_attributes_and_at_most_100_records():
    batch = _batch("etch-01", [T0 + i for i in range(250) for _ in range(2)],
                   ["ch1/temp", "rf/power"] * 250)
    requests = timestream_requests([batch, _batch("cvd-02", [T0])], "sensors")
    assert [len(records) for _, records in requests] == [100, 100, 50, 1]
    common, records = requests[0]
    assert common == {"Dimensions": [{"Name": "machine", "Value": "etch-01", "DimensionValueType": "VARCHAR"}],
                      "MeasureName": "sensors", "MeasureValueType": "MULTI", "TimeUnit": "MILLISECONDS"}
    assert records[0] == {"Time": str(T0), "MeasureValues": [
        {"Name": "ch1/temp", "Value": "0.25", "Type": "DOUBLE"}, {"Name": "rf/power", "Value": "1.25", "Type": "DOUBLE"}]}
    assert requests[3][0]["Dimensions"][0]["Value"] == "cvd-02"


def test_the_proxy_refuses_to_create_what_exists_as_timestream_does(timestream):
    """Without this, moto would replace the database (and its tables) on every start, and
    the update_table branch of prepare() would never run."""
    destination = TimestreamDestination(_settings(timestream.url))
    destination.prepare()
    for create in (lambda: destination.client.create_database(DatabaseName="fab"),
                   lambda: destination.client.create_table(DatabaseName="fab", TableName="readings")):
        with pytest.raises(ClientError) as refused:
            create()
        assert refused.value.response["Error"]["Code"] == "ConflictException"


def test_table_retention_comes_from_the_configuration(timestream):
    destination = TimestreamDestination(_settings(timestream.url))
    destination.prepare()
    assert timestream.calls == ["CreateDatabase", "CreateTable"]
    table = destination.client.describe_table(DatabaseName="fab", TableName="readings")["Table"]
    assert table["RetentionProperties"] == {"MemoryStoreRetentionPeriodInHours": 24,
                                            "MagneticStoreRetentionPeriodInDays": 90}
    assert table["MagneticStoreWriteProperties"]["EnableMagneticStoreWrites"] is True
    destination.write([_batch("etch-01", [T0, T0 + 1])], SinkStats())
    # A changed configuration updates the existing table on the next start: both creates
    # are refused (they exist), so prepare() takes its update_table branch.
    timestream.calls.clear()
    again = TimestreamDestination(_settings(timestream.url, memory_retention="2d", magnetic_retention="365d"))
    again.prepare()
    assert timestream.calls == ["CreateDatabase", "CreateTable", "UpdateTable"]
    table = again.client.describe_table(DatabaseName="fab", TableName="readings")["Table"]
    assert table["RetentionProperties"] == {"MemoryStoreRetentionPeriodInHours": 48,
                                            "MagneticStoreRetentionPeriodInDays": 365}
    assert table["MagneticStoreWriteProperties"]["EnableMagneticStoreWrites"] is True
    # The table was updated, not replaced: what it held before is still there.
    assert sorted(int(r["Time"]) for r in _stored(again)) == [T0, T0 + 1]


def test_batches_of_100_reach_timestream_once(timestream):
    destination = TimestreamDestination(_settings(timestream.url))
    destination.prepare()
    stats = SinkStats()
    destination.write([_batch("etch-01", [T0 + i for i in range(250)])], stats)
    assert timestream.writes == [100, 100, 50]
    assert stats.sent_records == 250 and stats.failed_records == stats.rejected_records == 0
    stored = _stored(destination)
    assert sorted(int(r["Time"]) for r in stored) == [T0 + i for i in range(250)]


def test_throttling_is_retried_with_backoff(timestream):
    waits: list[float] = []
    destination = TimestreamDestination(_settings(timestream.url), sleep=waits.append)
    destination.prepare()
    timestream.throttle = 3
    stats = SinkStats()
    destination.write([_batch("etch-01", [T0 + i for i in range(10)])], stats)
    assert stats.retries == 3 and stats.sent_records == 10 and stats.failed_records == 0
    assert len(waits) == 3 and waits[0] < waits[2]  # the waits grow
    assert len(_stored(destination)) == 10  # sent once, not once per attempt


def test_throttling_that_never_ends_gives_up_and_counts(timestream):
    destination = TimestreamDestination(_settings(timestream.url, max_attempts=3), sleep=lambda s: None)
    destination.prepare()
    timestream.throttle = 100
    stats = SinkStats()
    destination.write([_batch("etch-01", [T0, T0 + 1])], stats)
    assert stats.failed_records == 2 and stats.sent_records == 0 and "ThrottlingException" in stats.last_error


def test_a_rejected_record_is_reported_and_the_rest_is_stored(timestream):
    destination = TimestreamDestination(_settings(timestream.url))
    destination.prepare()
    future = int(time.time() * 1000) + 3_600_000
    stats = SinkStats()
    destination.write([_batch("etch-01", [T0, T0 + 1, future, T0 + 2])], stats)
    assert stats.rejected_records == 1 and stats.sent_records == 3 and stats.retries == 0
    assert list(stats.rejections) == [{"machine": "etch-01", "time": str(future),
                                       "reason": "The record timestamp is outside the time range of the data ingestion window."}]
    assert sorted(int(r["Time"]) for r in _stored(destination)) == [T0, T0 + 1, T0 + 2]


def test_a_full_queue_drops_instead_of_blocking_ingest():
    release = threading.Event()
    stuck = threading.Event()  # the worker has taken the first batch and waits in write()
    written: list[int] = []

    class Stuck:
        name = "stuck"

        def prepare(self):
            pass

        def write(self, batches, stats):
            stuck.set()
            release.wait(30)
            written.extend(len(b) for b in batches)

    sink = SinkQueue(Stuck(), max_readings=25).start()
    first = _batch("m", list(range(T0, T0 + 10)))
    assert sink.offer(first)
    assert stuck.wait(30), "the sink's worker never took the first batch"
    offered = [sink.offer(_batch("m", list(range(T0 + 100 * i, T0 + 100 * i + 10)))) for i in range(1, 5)]
    assert offered == [True, True, False, False]  # 20 queued fit, the next 20 do not
    assert sink.stats.dropped_readings == 20
    assert (sink.stats.dropped_from_ms, sink.stats.dropped_to_ms) == (T0 + 300, T0 + 409)
    release.set()
    assert sink.flush(10)
    sink.stop()
    assert sum(written) == 30
