"""S3 that fails under a running pipeline (issue 14's fault suite): 500 InternalError, 503
SlowDown and requests that get no answer at all, from a proxy in front of moto's server
(`tests.faultproxy.FaultyS3`), while readings are published over the real broker at QoS 1
and the scheduler seals every second into the S3 lake.

While a fault is on, readings go on being taken and acknowledged (they stay in the log and in
memory), each seal fails after the client's retries with S3's reason in `/health` (200,
`degraded`, the seal step and its message) and is counted in `/metrics`; a request that gets
no answer fails after the client's read timeout instead of holding the seal. Once the fault is
off, the next seal moves every log segment into the lake, `/health` is `ready` again, and
every acknowledged reading is in SQL exactly once, and in the lake's files exactly once.
While the lake cannot be listed, SQL answers every reading taken or fails with the store's
reason, never fewer. A SlowDown that lasts two requests is absorbed by botocore's retries: no
seal fails.

Real parts: mosquitto (mosquitto_pub, QoS 1), moto's S3 server over HTTP behind the proxy, a
running instance (pipeline, scheduler, HTTP API). The S3 clients' timeouts and attempts are
lowered for the test (`tiers.store.DEFAULT_S3_LIMITS`: 1 s, 3 attempts) so that a hang costs
seconds; their defaults are checked on their own.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from fabtier.runner import Instance
from tests.conftest import make_settings, mosquitto_pub, wait_for
from tests.fabtier.test_unhealthy import _get
from tests.faultproxy import HANG, INTERNAL_ERROR, SLOW_DOWN, FaultyS3
from tiers import store as store_module
from tiers.store import S3Limits, S3Store

MACHINE, SENSOR = "etch-07", "ch1/temp"
BATCH = 20
# The test's S3 clients: short waits, still retrying (a hang costs ~3 x 1 s plus backoff).
TEST_LIMITS = S3Limits(connect_timeout=1.0, read_timeout=1.0, max_attempts=3)


def _sql(instance: Instance, statement: str) -> tuple[int, object]:
    request = urllib.request.Request(instance.api_url + "/sql?format=json", data=statement.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class Publisher:
    """Publishes batches of readings with mosquitto_pub at QoS 1, one after the other, on a
    thread until stopped; `keys` holds every reading of every batch the broker acknowledged."""

    def __init__(self, broker, first_ts: int) -> None:
        self.broker = broker
        self.next_ts = first_ts
        self.keys: set[tuple[str, str, int]] = set()
        self.batches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def publish(self) -> None:
        """One batch, now (mosquitto_pub returns once the broker has acknowledged it)."""
        ts = list(range(self.next_ts, self.next_ts + BATCH))
        self.next_ts += BATCH
        mosquitto_pub(self.broker, f"fab/{MACHINE}", json.dumps(
            {"ts": ts, "sensor": [SENSOR] * BATCH, "v": [0.5 * i for i in range(BATCH)]}))
        self.keys.update((MACHINE, SENSOR, t) for t in ts)
        self.batches += 1

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.1):
                self.publish()
        except BaseException as exc:  # seen by stop()
            self.error = exc

    def __enter__(self) -> Publisher:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)
        if self.error is not None:
            raise self.error


@pytest.fixture
def faulty(tmp_path, broker, s3_bucket, monkeypatch):
    """A running instance whose lake is s3://{bucket}/lake through `FaultyS3`, sealing every
    second; yields (instance, proxy)."""
    endpoint, bucket = s3_bucket
    monkeypatch.setattr(store_module, "DEFAULT_S3_LIMITS", TEST_LIMITS)
    proxy = FaultyS3(endpoint, hang_s=30)
    # Only the seal runs on a short period: every other job ran once at the start and would
    # fail against the faulty store too, which is not what these tests look at.
    settings = make_settings(tmp_path, broker,
                             cold={"store": f"s3://{bucket}/lake", "endpoint_url": proxy.url, "seal_every": "1s"},
                             warm={"rollup_every": "1h", "age_out_every": "1h"},
                             lifecycle={"run_every": "1h"}, retrieval={"poll_every": "1h"})
    instance = Instance(settings).start()
    try:
        yield instance, proxy
    finally:
        proxy.passing()
        instance.stop()
        proxy.close()


def _stored(instance: Instance) -> int:
    return instance.pipeline.metrics_snapshot()["readings_stored"]


def _health(instance: Instance) -> dict:
    status, health = _get(instance, "/health")
    assert status == 200, health  # degraded is still 200: the pipeline takes readings
    return health


def _seal_problem(instance: Instance) -> dict | None:
    health = _health(instance)
    if health["status"] != "degraded":
        return None
    return next((p for p in health["problems"] if p["step"] == "seal"), None)


def _all_sealed(instance: Instance) -> bool:
    """No log segment but the active one, and no reading in memory that is not in the lake."""
    wal = instance.pipeline.wal
    assert wal is not None
    return wal.segments() == [wal.active] and instance.pipeline.metrics_snapshot()["unsealed_rows"] == 0


def _lake_keys(endpoint: str, bucket: str) -> list[tuple[str, str, int]]:
    """Every reading in the lake's raw Parquet files, read straight from moto (not through
    fabtier, nor the proxy): one entry per stored row."""
    fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http", region="us-east-1")
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(f"{bucket}/lake/raw", recursive=True,
                                                                 allow_not_found=True))
             if f.is_file and f.path.endswith(".parquet")]
    found: list[tuple[str, str, int]] = []
    for path in files:
        table = pq.read_table(path, filesystem=fs, columns=["machine", "sensor", "ts"], partitioning=None)
        ts = table.column("ts").cast("int64").to_pylist()
        found += zip(table.column("machine").to_pylist(), table.column("sensor").to_pylist(), ts, strict=True)
    return found


def _assert_recovered(instance: Instance, publisher: Publisher, s3_bucket: tuple[str, str]) -> dict:
    """After the fault: every log segment sealed, ready again, every reading once; the metrics."""
    total = len(publisher.keys)
    wait_for(lambda: _stored(instance) == total, what=f"{total} readings to be stored")
    # The seal (every second) moves what piled up in the log during the fault.
    wait_for(lambda: _health(instance)["status"] == "ready", timeout=45, what="/health to be ready again")
    wait_for(lambda: _all_sealed(instance), timeout=45, what="every log segment to be sealed")
    health = _health(instance)
    assert (health["status"], health["state"], health["problems"]) == ("ready", "ready", []), health

    status, rows = _sql(instance, "SELECT count(*) AS n, count(DISTINCT (machine, sensor, ts)) AS k FROM readings")
    assert (status, rows) == (200, [{"n": total, "k": total}])
    status, rows = _sql(instance, "SELECT min(epoch_ms(ts)) AS lo, max(epoch_ms(ts)) AS hi FROM readings")
    assert rows == [{"lo": min(k[2] for k in publisher.keys), "hi": max(k[2] for k in publisher.keys)}]
    # In the lake itself, each once (no reading left only in the log, none written twice by a
    # seal that failed part way and was done again).
    endpoint, bucket = s3_bucket
    stored = _lake_keys(endpoint, bucket)
    assert len(stored) == total and set(stored) == publisher.keys
    _, metrics = _get(instance, "/metrics")
    assert metrics["failing_steps"] == [] and metrics["unsealed_rows"] == 0
    return metrics


def _fault_then_recover(faulty, broker, s3_bucket, mode: str, reason: str) -> tuple[dict, dict]:
    """Readings before, during and after `mode`; the seal's problem while it was on, and the
    metrics after."""
    instance, proxy = faulty
    publisher = Publisher(broker, instance.pipeline.clock.now_ms() - 60_000)
    publisher.publish()
    wait_for(lambda: _stored(instance) == BATCH, what="the first batch to be stored")
    wait_for(lambda: _all_sealed(instance), what="the first batch to be sealed")
    assert _health(instance)["status"] == "ready"
    sealed_before = instance.pipeline.metrics_snapshot()["segments_sealed"]

    with proxy.fault(mode), publisher:
        # The seal fails again and again (every second, each segment): one open problem whose
        # count grows.
        wait_for(lambda: (p := _seal_problem(instance)) is not None and p["failures"] >= 2,
                 timeout=45, what=f"two failed seals under {mode}")
        problem = _seal_problem(instance)
        assert problem is not None
        _, metrics = _get(instance, "/metrics")
        assert metrics["seal_failures"] >= 2 and metrics["job_failures"]["seal"] >= 1, metrics
        assert "seal" in metrics["failing_steps"]
        assert metrics["unsealed_rows"] > 0  # kept in the log and in memory meanwhile
        # SQL is never silently short while the lake cannot be listed: it answers every
        # reading taken (publishing goes on meanwhile), or fails with the store's reason.
        taken = _stored(instance)
        status, answer = _sql(instance, "SELECT count(*) AS n FROM readings")
        if status == 200:
            assert isinstance(answer, list) and taken <= answer[0]["n"] <= _stored(instance), answer
        else:
            assert status >= 500 and reason in str(answer), (status, answer)
        wait_for(lambda: publisher.batches >= 3, what="batches published during the fault")
    assert proxy.failures(mode) >= 2

    assert "log segment" in problem["message"] and reason in problem["message"], problem
    assert problem["since"].endswith("Z") and problem["since_ms"] <= problem["last_ms"]
    # Still taking readings after the fault, and the seal catches up with all of them.
    publisher.publish()
    metrics = _assert_recovered(instance, publisher, s3_bucket)
    assert metrics["seal_failures"] >= 2 and metrics["job_failures"]["seal"] >= 1
    assert metrics["segments_sealed"] > sealed_before
    return problem, metrics


def test_s3_internal_errors_degrade_health_until_the_store_answers_then_every_reading_is_sealed_once(
        faulty, broker, s3_bucket):
    _, proxy = faulty
    problem, _ = _fault_then_recover(faulty, broker, s3_bucket, INTERNAL_ERROR, "InternalError")
    assert "We encountered an internal error" in problem["message"]
    # botocore retried each failed request before the seal gave up on it.
    assert proxy.most_tries(INTERNAL_ERROR) >= TEST_LIMITS.max_attempts


def test_s3_slow_down_degrades_health_until_it_ends_then_every_reading_is_sealed_once(faulty, broker, s3_bucket):
    _, proxy = faulty
    problem, _ = _fault_then_recover(faulty, broker, s3_bucket, SLOW_DOWN, "SlowDown")
    assert "Please reduce your request rate" in problem["message"]
    assert proxy.most_tries(SLOW_DOWN) >= TEST_LIMITS.max_attempts


def test_s3_that_never_answers_fails_the_seal_at_the_read_timeout_then_every_reading_is_sealed_once(
        faulty, broker, s3_bucket):
    _, proxy = faulty
    # A hang longer than the client's read timeout (30 s against 1 s): without the timeout
    # the seal would wait for the proxy and /health would never say why.
    problem, _ = _fault_then_recover(faulty, broker, s3_bucket, HANG, "Read timeout")
    assert "ReadTimeoutError" in problem["message"]
    assert proxy.most_tries(HANG) >= TEST_LIMITS.max_attempts


def test_a_brief_slow_down_is_absorbed_by_the_clients_retries(faulty, broker, s3_bucket):
    instance, proxy = faulty
    publisher = Publisher(broker, instance.pipeline.clock.now_ms() - 60_000)
    # The next two writes are throttled, then S3 takes them: fewer than the client's attempts.
    proxy.set(SLOW_DOWN, times=TEST_LIMITS.max_attempts - 1, methods={"PUT"})
    publisher.publish()
    publisher.publish()
    wait_for(lambda: proxy.failures(SLOW_DOWN) == TEST_LIMITS.max_attempts - 1, timeout=30,
             what="the throttled writes")
    metrics = _assert_recovered(instance, publisher, s3_bucket)
    assert proxy.most_tries(SLOW_DOWN) == TEST_LIMITS.max_attempts - 1  # the same request, retried
    assert metrics["seal_failures"] == 0 and metrics["job_failures"]["seal"] == 0, metrics


def test_the_s3_clients_wait_a_bounded_time_and_keep_retrying(s3_bucket):
    """The defaults (no test limits): a store that never answers costs at most
    connect + attempts x read timeout per request, not botocore's 60 s reads; 503 SlowDown
    and 500 are retried (standard mode), by pyarrow's client too."""
    endpoint, bucket = s3_bucket
    store = S3Store(bucket, "lake", endpoint_url=endpoint)
    limits = store_module.DEFAULT_S3_LIMITS
    assert store.limits == limits
    assert 0 < limits.connect_timeout <= 10 and 0 < limits.read_timeout <= 30 and limits.max_attempts >= 3
    config = store.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (limits.connect_timeout, limits.read_timeout)
    assert config.retries == {"mode": "standard", "total_max_attempts": limits.max_attempts}
    # A forked seal child's client is built from the same configuration.
    store.after_fork()
    assert store.client.meta.config.read_timeout == limits.read_timeout
    fs, _ = store.arrow_filesystem()
    options = fs.__reduce__()[1][0]  # what the file system would be pickled with: its options
    assert options["connect_timeout"] == limits.connect_timeout
