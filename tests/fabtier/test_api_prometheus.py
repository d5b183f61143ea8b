"""`GET /metrics/prometheus` (issue 12): the figures of `GET /metrics` in Prometheus' text
format, behind the same token; counters for running totals, gauges for what holds now."""

import dataclasses
import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from core.settings import Secret
from fabtier import promexport
from fabtier.runner import Instance
from tests.conftest import make_settings

TOKEN = "prom-token"
RULE = {"name": "chamber-overtemp", "sensor": "*/ch*/temp", "high": 80.0}


def _get(url: str, token: str | None = TOKEN) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_scrape_shows_what_metrics_shows(tmp_path, broker):
    settings = make_settings(tmp_path, broker, alerts={"rules": [RULE]})
    settings = dataclasses.replace(settings, api=dataclasses.replace(settings.api, token=Secret(TOKEN)))
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        body = {"ts": [now - 3000, now - 2000, now - 1000], "sensor": ["ch1/temp"] * 3, "v": [20.0, 90.0, 20.0]}
        instance.pipeline.process([("fab/etch-01", json.dumps(body).encode(), 0, 0),
                                   ("fab/etch-01/ch1/temp", b"not json", 0, 0)])
        status, headers, text = _get(instance.api_url + "/metrics/prometheus")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        figures = json.loads(_get(instance.api_url + "/metrics")[2])
        samples = _samples(text.decode())
        assert samples[("fabtier_readings_stored_total", ())] == figures["readings_stored"] == 3
        assert samples[("fabtier_messages_total", ())] == figures["messages"] == 2
        assert samples[("fabtier_quarantined_total", ())] == figures["quarantined"] == 1
        assert samples[("fabtier_unsealed_rows", ())] == figures["unsealed_rows"] == 3
        assert samples[("fabtier_unsealed_bytes", ())] == figures["unsealed_bytes"] > 0
        assert samples[("fabtier_max_unsealed_bytes", ())] == settings.ingest.max_unsealed
        assert samples[("fabtier_backpressure", ())] == 0
        assert samples[("fabtier_seal_failures_total", ())] == 0
        assert samples[("fabtier_state", (("state", "ready"),))] == 1
        assert samples[("fabtier_state", (("state", "failed"),))] == 0
        assert samples[("fabtier_job_failures_total", (("job", "seal"),))] == figures["job_failures"]["seal"] == 0
        assert samples[("fabtier_failing_steps", ())] == 0
        assert samples[("fabtier_alerts_raised_total", ())] == samples[("fabtier_alerts_cleared_total", ())] == 1
        assert samples[("fabtier_alerts_open", ())] == 0
        for sink in figures["alerts"]["sinks"]:  # log and mqtt: each sink's backlog
            assert ("fabtier_alert_sink_backlog", (("sink", sink),)) in samples

        for token in (None, "wrong"):
            status, headers, _ = _get(instance.api_url + "/metrics/prometheus", token=token)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    finally:
        instance.stop()


def test_exposition_of_sinks_steps_and_a_missing_figure():
    text = promexport.exposition({
        "messages": 7, "backpressure": True, "state": "ready", "wal_segment": 3,
        "sinks": {"influx": {"queued_readings": 12, "sent_records": 5, "dropped_readings": 0, "last_error": ""}},
        "job_failures": {"seal": 2, "compact": 0}, "failing_steps": ["seal"],
        "alerts": {"raised": 4, "open": 1, "decided_to_durable_ms": {"n": 3, "p50": 1.5, "p99": None, "max": 2.0},
                   "sinks": {"webhook": {"delivered": 3, "backlog": 1, "failures": 2, "last_error": "503"}}},
    }).decode()
    samples = _samples(text)
    assert samples[("fabtier_messages_total", ())] == 7
    assert samples[("fabtier_backpressure", ())] == 1
    assert samples[("fabtier_wal_segment", ())] == 3
    assert samples[("fabtier_sink_queued_readings", (("sink", "influx"),))] == 12
    assert samples[("fabtier_sink_sent_records_total", (("sink", "influx"),))] == 5
    assert samples[("fabtier_job_failures_total", (("job", "seal"),))] == 2
    assert samples[("fabtier_step_failing", (("step", "seal"),))] == 1
    assert samples[("fabtier_alert_sink_backlog", (("sink", "webhook"),))] == 1
    assert samples[("fabtier_alert_sink_failures_total", (("sink", "webhook"),))] == 2
    assert samples[("fabtier_alert_decided_to_durable_ms", (("quantile", "0.5"),))] == 1.5
    assert ("fabtier_alert_decided_to_durable_ms", (("quantile", "0.99"),)) not in samples
    assert not any(name == "fabtier_readings_stored_total" for name, _ in samples)  # not in the figures
    assert "# TYPE fabtier_messages counter" in text or "# TYPE fabtier_messages_total counter" in text
