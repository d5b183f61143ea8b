"""Say when it is unhealthy (issue 14): a store that refuses fabtier's writes makes the seal
(or a tiering job) fail; the ERROR line carries the store's reason and the fix, `/health`
stays 200 but says `degraded` with the step, its times and the message, `/metrics` counts the
failures; once the store takes writes again the next run works, `/health` is back to `ready`
and every reading is in the lake exactly once.

Real parts: mosquitto (publishing with mosquitto_pub), moto's S3 server over plain HTTP, a
running instance (pipeline, scheduler, HTTP API). The refusal is the one of the issue: the
bucket policy statement refusing requests without TLS, which locks out a fabtier that reaches
its store over http://."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest

from fabtier.runner import Instance
from lifecycle import scheduler
from tests.conftest import make_settings, mosquitto_pub, wait_for
from tiers import s3bucket
from tiers.store import S3Store

MACHINE, SENSOR = "etch-01", "ch1/temp"


def _get(instance: Instance, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(instance.api_url + path, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _sql(instance: Instance, statement: str) -> list[dict]:
    request = urllib.request.Request(instance.api_url + "/sql?format=json", data=statement.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture
def running(tmp_path, broker, s3_bucket):
    endpoint, bucket = s3_bucket
    # No scheduled run in the test's time (every job ran once at the start): the test runs
    # them itself, so that nothing else touches the locked bucket meanwhile.
    settings = make_settings(tmp_path, broker, cold={"store": f"s3://{bucket}/lake", "endpoint_url": endpoint},
                             warm={"rollup_every": "1h", "age_out_every": "1h"},
                             lifecycle={"run_every": "1h"}, retrieval={"poll_every": "1h"})
    instance = Instance(settings).start()
    try:
        yield instance, S3Store(bucket, "lake", endpoint_url=endpoint)
    finally:
        instance.stop()


def _publish(broker, first_ts: int, n: int) -> None:
    mosquitto_pub(broker, f"fab/{MACHINE}", json.dumps({"ts": list(range(first_ts, first_ts + n)),
                                                        "sensor": [SENSOR] * n, "v": [float(i) for i in range(n)]}))


def _stored(instance: Instance) -> int:
    return instance.pipeline.metrics_snapshot()["readings_stored"]


def _lock_out(store: S3Store) -> None:
    """What `fabtier cold setup` did before issue 14 on an http:// endpoint."""
    s3bucket.secure_bucket(store, require_tls=True)


def _let_in(store: S3Store) -> None:
    """The fix the ERROR line names: `fabtier cold setup` again (it removes the statement)."""
    s3bucket.secure_bucket(store)


def _assert_all_once(instance: Instance, total: int) -> None:
    (row,) = _sql(instance, "SELECT count(*) AS n, count(DISTINCT (machine, sensor, ts)) AS k FROM readings")
    assert row == {"n": total, "k": total}


def test_a_seal_the_store_refuses_is_an_error_with_its_reason_degraded_health_and_counted(running, broker, caplog):
    instance, store = running
    pipeline = instance.pipeline
    now = pipeline.clock.now_ms()
    _publish(broker, now - 60_000, 50)
    wait_for(lambda: _stored(instance) == 50, what="50 readings to be stored")
    status, health = _get(instance, "/health")
    assert (status, health["status"], health["problems"]) == (200, "ready", [])

    _lock_out(store)
    runner = scheduler.runner_for(pipeline)
    with caplog.at_level(logging.INFO):
        report = runner.run("seal")
    assert "error" in report and "1 log segment(s)" in report["error"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    seal_lines = [m for m in errors if m.startswith("seal failed: log segment")]
    assert seal_lines, errors
    # The store's own reason (moto answers the Deny with HTTP 403 Forbidden) and the fix.
    assert "403" in seal_lines[0] and "Forbidden" in seal_lines[0], seal_lines
    assert "plain HTTP" in seal_lines[0] and s3bucket.TLS_STATEMENT_ID in seal_lines[0]
    assert "fabtier cold setup" in seal_lines[0] and "stays in the log" in seal_lines[0]
    assert any(m.startswith("tiering job seal failed") for m in errors), errors
    assert not any(r.getMessage().startswith("sealed ") for r in caplog.records)

    status, health = _get(instance, "/health")
    assert status == 200 and health["status"] == "degraded" and health["state"] == "ready", health
    (problem,) = health["problems"]
    assert problem["step"] == "seal" and problem["failures"] == 1
    assert "403" in problem["message"] and "log segment" in problem["message"]
    assert s3bucket.TLS_STATEMENT_ID in problem["fix"]
    assert problem["since"] == problem["last"] and problem["since"].endswith("Z")
    status, metrics = _get(instance, "/metrics")
    assert metrics["seal_failures"] >= 1 and metrics["job_failures"]["seal"] == 1, metrics
    assert metrics["job_failures"]["compact"] == 0 and metrics["failing_steps"] == ["seal"]
    assert metrics["unsealed_rows"] == 50

    # Still failing: the same problem, one more failure; new readings are kept meanwhile.
    _publish(broker, now - 30_000, 20)
    wait_for(lambda: _stored(instance) == 70, what="70 readings to be stored")
    runner.run("seal")
    _, health = _get(instance, "/health")
    (again,) = health["problems"]
    assert again["step"] == "seal" and again["failures"] >= 2 and again["since_ms"] == problem["since_ms"]
    _assert_all_once(instance, 70)  # from the log while the lake refuses them

    _let_in(store)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        report = runner.run("seal")
    assert "error" not in report and report["rows"] == 70, report
    assert any(r.getMessage().startswith("seal works again") for r in caplog.records)
    status, health = _get(instance, "/health")
    assert (status, health["status"], health["problems"]) == (200, "ready", [])
    _, metrics = _get(instance, "/metrics")
    assert metrics["failing_steps"] == [] and metrics["unsealed_rows"] == 0
    assert metrics["job_failures"]["seal"] == 2  # counts never go down
    _assert_all_once(instance, 70)
    assert len(store.objects("raw/")) >= 1


def test_a_compaction_the_store_refuses_degrades_health_until_it_works(running, broker, caplog):
    instance, store = running
    pipeline = instance.pipeline
    runner = scheduler.runner_for(pipeline)
    now = pipeline.clock.now_ms()
    _publish(broker, now - 90_000, 30)
    wait_for(lambda: _stored(instance) == 30, what="30 readings to be stored")
    assert "error" not in runner.run("seal")
    _publish(broker, now - 60_000, 30)
    wait_for(lambda: _stored(instance) == 60, what="60 readings to be stored")
    assert "error" not in runner.run("seal")
    later = now + 4 * 3600_000  # the hour has settled ([cold] compact_after = 2h)

    _lock_out(store)
    with caplog.at_level(logging.INFO):
        report = runner.run("compact", now_ms=later)
    assert "error" in report and "fix" in report, report
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(m.startswith("tiering job compact failed") and "403" in m and "plain HTTP" in m for m in errors), errors
    status, health = _get(instance, "/health")
    assert status == 200 and health["status"] == "degraded"
    assert [p["step"] for p in health["problems"]] == ["compact"]
    _, metrics = _get(instance, "/metrics")
    assert metrics["job_failures"]["compact"] == 1 and metrics["failing_steps"] == ["compact"]

    _let_in(store)
    report = runner.run("compact", now_ms=later)
    assert "error" not in report and report["sets"] == 1 and report["rows"] == 60, report
    status, health = _get(instance, "/health")
    assert (status, health["status"], health["problems"]) == (200, "ready", [])
    _assert_all_once(instance, 60)


def test_a_broker_lost_after_the_start_is_a_problem_until_it_is_back(tmp_path, broker):
    """A broker that goes away after fabtier subscribed (a restart, a network cut, a login
    refused since) makes /health degraded with a `broker` problem while paho reconnects; once
    it is back, /health is ready again and what was published meanwhile is stored."""
    settings = make_settings(tmp_path, broker)
    instance = Instance(settings).start()
    try:
        status, body = _get(instance, "/health")
        assert status == 200 and body["status"] == "ready"
        broker.stop()
        wait_for(lambda: _get(instance, "/health")[1]["status"] == "degraded", timeout=30,
                 what="/health degraded without the broker")
        status, body = _get(instance, "/health")
        (problem,) = [p for p in body["problems"] if p["step"] == "broker"]
        assert status == 200 and body["state"] == "ready" and problem["message"] and problem["fix"]
        broker.start()
        wait_for(lambda: _get(instance, "/health")[1]["status"] == "ready", timeout=60,
                 what="/health ready once the broker is back")
        _publish(broker, instance.pipeline.clock.now_ms() - 10_000, 5)
        wait_for(lambda: _stored(instance) == 5, timeout=30, what="readings stored after the reconnect")
    finally:
        instance.stop()
