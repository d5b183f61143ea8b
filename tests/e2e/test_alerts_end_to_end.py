"""Alerts end to end: an independent publisher (mosquitto_pub) sends excursions, an independent
subscriber (mosquitto_sub) receives them; recipes, restarts, and sinks that fail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fabtier.broker import free_port
from fabtier.runner import Instance
from tests.conftest import fabtier_cli, make_settings, mosquitto_pub, wait_for, write_config

RULE = {"name": "chamber-overtemp", "sensor": "*/ch*/temp", "high": 80.0, "low": 10.0, "hysteresis": 2.0}


def _readings(ts0: int, values: list[float], step: int = 10) -> list[str]:
    return [json.dumps({"ts": ts0 + i * step, "v": v}) for i, v in enumerate(values)]


def _alerts_toml(rules: list[dict], **keys) -> str:
    text = "[alerts]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    for rule in rules:
        text += "[[alerts.rules]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in rule.items())
    return text


def _config(settings, tmp_path: Path, rules: list[dict], **keys) -> Path:
    path = write_config(settings, tmp_path / "fabtier.toml")
    path.write_text(path.read_text() + _alerts_toml(rules, **keys))
    return path


def _sql(config: Path, statement: str) -> list[dict]:
    return json.loads(fabtier_cli("sql", statement, "--config", str(config), "--format", "json").stdout)


def _of(sub, machine: str, sensor: str) -> list[dict]:
    return [p for t, p in sub.messages if t == f"fab-alerts/{machine}/{sensor}"]


def _marker(broker, sub, ts: int, machine: str = "marker-01") -> None:
    """An excursion on another machine, published after everything else: alerts reach the
    subscriber in order over one connection, so once the marker's alert is there, any repeat
    of an earlier alert would have been there too."""
    mosquitto_pub(broker, f"fab/{machine}/ch1/temp", json.dumps({"ts": ts, "v": 999.0}))
    wait_for(lambda: _of(sub, machine, "ch1/temp"), what="the marker alert")


def test_an_excursion_is_raised_once_and_cleared_once(broker, alert_subscriber, tmp_path):
    settings = make_settings(tmp_path, broker, alerts={"rules": [RULE]})
    config = _config(settings, tmp_path, [RULE])
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        # 85 raises; 90 and 79 (inside, not past the hysteresis) change nothing; 77 clears.
        mosquitto_pub(broker, "fab/etch-01/ch1/temp", *_readings(now - 5000, [50, 85, 90, 79, 77, 50]))
        # A batch on another chamber: one low excursion inside a batch of normal readings.
        mosquitto_pub(broker, "fab/etch-01", json.dumps({
            "ts": [now - 4000, now - 4000, now - 3990, now - 3980],
            "sensor": ["ch2/temp", "rf/forward_power", "ch2/temp", "ch2/temp"], "v": [40, 5000, 3, 40]}))
        _marker(broker, alert_subscriber, now - 1000)

        got = _of(alert_subscriber, "etch-01", "ch1/temp")
        assert [(p["state"], p["value"], p["ts"]) for p in got] == [
            ("raised", 85, now - 4990), ("cleared", 77, now - 4960)]
        raised = got[0]
        assert {k: raised[k] for k in ("machine", "sensor", "kind", "threshold", "rule")} == {
            "machine": "etch-01", "sensor": "ch1/temp", "kind": "high", "threshold": 80.0, "rule": "chamber-overtemp"}
        assert now - 60_000 < raised["raised_at"] < now + 60_000 and raised["id"]
        assert [(p["state"], p["kind"], p["value"]) for p in _of(alert_subscriber, "etch-01", "ch2/temp")] == [
            ("raised", "low", 3), ("cleared", "low", 40)]
        assert not _of(alert_subscriber, "etch-01", "rf/forward_power")

        # A fixed-threshold rule: no note and no step, null on MQTT and NULL in SQL alike.
        assert {(p["note"], p["step"]) for p in got} == {(None, None)}
        query = ("SELECT machine, sensor, epoch_ms(ts) AS ts, value, kind, threshold, rule, state, note, step, seq "
                 "FROM alerts WHERE machine = 'etch-01' ORDER BY seq")
        rows = _sql(config, query)
        assert [(r["sensor"], r["state"], r["value"], r["note"], r["step"]) for r in rows] == [
            ("ch1/temp", "raised", 85, None, None), ("ch1/temp", "cleared", 77, None, None),
            ("ch2/temp", "raised", 3, None, None), ("ch2/temp", "cleared", 40, None, None)]
        assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
        assert [f"w0:{r['seq']}" for r in rows[:2]] == [p["id"] for p in got]
        fabtier_cli("lifecycle", "run", "--config", str(config))  # into the lake: the same rows
        assert _sql(config, query) == rows
    finally:
        instance.stop()
    assert _sql(config, query) == rows  # read from the lake with no instance running
    assert (settings.data_dir / "lake" / "alerts").is_dir()


def _start_process(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fabtier.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _metrics(settings) -> dict:
    from fabtier.reader import _request
    try:
        status, body = _request(settings, "GET", "/metrics", timeout=2)
    except OSError:
        return {}
    return json.loads(body) if status == 200 else {}


def test_an_excursion_raised_before_a_crash_is_not_raised_again(broker, alert_subscriber, tmp_path):
    settings = make_settings(tmp_path, broker, alerts={"rules": [RULE]})
    config = _config(settings, tmp_path, [RULE])
    process = _start_process(config)
    try:
        wait_for(lambda: _metrics(settings).get("state") == "ready", timeout=60, what="fabtier to be ready")
        import time
        now = int(time.time() * 1000)
        mosquitto_pub(broker, "fab/etch-01/ch1/temp", *_readings(now - 5000, [50, 85, 86]))
        wait_for(lambda: _of(alert_subscriber, "etch-01", "ch1/temp"), what="the raised alert")
        # The MQTT sink has recorded the delivery, so what follows is only about the engine.
        wait_for(lambda: _metrics(settings)["alerts"]["sinks"]["mqtt"]["position"] >= 1, what="the cursor")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

        # Still out while fabtier is down (the broker queues it), then back inside.
        mosquitto_pub(broker, "fab/etch-01/ch1/temp", *_readings(now - 4000, [88, 90]))
        process = _start_process(config)
        wait_for(lambda: _metrics(settings).get("state") == "ready", timeout=60, what="fabtier to be ready again")
        mosquitto_pub(broker, "fab/etch-01/ch1/temp", *_readings(now - 3000, [91, 60]))
        _marker(broker, alert_subscriber, now - 1000)
        assert [p["state"] for p in _of(alert_subscriber, "etch-01", "ch1/temp")] == ["raised", "cleared"]
        rows = _sql(config, "SELECT state, value FROM alerts WHERE machine = 'etch-01' ORDER BY id")
        assert rows == [{"state": "raised", "value": 85}, {"state": "cleared", "value": 60}]
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out


RECIPES = """
[[recipes]]
name = "ETCH-A"
version = "1"
effective = {v1}
[[recipes.steps]]
name = "process"
duration = "1h"
limits = {{ temp = [60.0, 3.0] }}

[[recipes]]
name = "ETCH-A"
version = "2"
effective = {v2}
[[recipes.steps]]
name = "process"
duration = "1h"
limits = {{ temp = [70.0, 3.0] }}
"""


V3 = """
[[recipes]]
name = "ETCH-A"
version = "3"
effective = {v3}
[[recipes.steps]]
name = "process"
duration = "1h"
limits = {{ temp = [80.0, 3.0] }}
"""


def _ctx(ts: int, lot: str, event: str = "start") -> str:
    return json.dumps({"ts": ts, "event": event, "lot": lot, "wafer": "W01", "recipe": "ETCH-A"})


def test_recipe_versions_take_effect_at_their_time_and_reload_while_running(broker, alert_subscriber, tmp_path):
    import time
    now = int(time.time() * 1000)
    recipes = tmp_path / "recipes.toml"
    recipes.write_text(RECIPES.format(v1=now - 86_400_000, v2=now - 600_000))
    window = {"name": "recipe-window", "sensor": "*/ch*/temp", "recipe": True}
    settings = make_settings(tmp_path, broker, alerts={"rules": [window], "recipes": str(recipes),
                                                       "recipes_reload": "100ms"})
    config = _config(settings, tmp_path, [window], recipes=str(recipes))
    instance = Instance(settings).start()
    try:
        # L1 starts before version 2 took effect, L2 after. 71 is out of version 1's window
        # (57..63) and inside version 2's (67..73): judged by the version of the run.
        mosquitto_pub(broker, "fab-ctx/etch-01", _ctx(now - 1_200_000, "L1"), _ctx(now - 300_000, "L2"))
        mosquitto_pub(broker, "fab/etch-01/ch1/temp",
                      *_readings(now - 1_100_000, [61, 66, 61]), *_readings(now - 200_000, [71, 75, 71]))
        wait_for(lambda: len(_of(alert_subscriber, "etch-01", "ch1/temp")) >= 4, what="four alerts")
        got = [(p["state"], p["value"], p["lot"], p["recipe_version"], p["threshold"])
               for p in _of(alert_subscriber, "etch-01", "ch1/temp")]
        assert got == [("raised", 66, "L1", "1", 63.0), ("cleared", 61, "L1", "1", 63.0),
                       ("raised", 75, "L2", "2", 73.0), ("cleared", 71, "L2", "2", 73.0)]

        # A new version, written while running, takes effect for the runs that start after it.
        recipes.write_text(RECIPES.format(v1=now - 86_400_000, v2=now - 600_000) + V3.format(v3=now - 60_000))
        wait_for(lambda: instance.pipeline.alerting.recipe_reloads == 1, what="the recipe reload")
        mosquitto_pub(broker, "fab-ctx/etch-01", _ctx(now - 50_000, "L3"))
        mosquitto_pub(broker, "fab/etch-01/ch1/temp", *_readings(now - 40_000, [71, 80]))
        wait_for(lambda: len(_of(alert_subscriber, "etch-01", "ch1/temp")) >= 5, what="the v3 alert")
        last = _of(alert_subscriber, "etch-01", "ch1/temp")[4]
        assert (last["state"], last["value"], last["lot"], last["recipe_version"]) == ("raised", 71, "L3", "3")

        runs = _sql(config, "SELECT lot, recipe_version FROM lot_runs ORDER BY start_ts")
        assert runs == [{"lot": "L1", "recipe_version": "1"}, {"lot": "L2", "recipe_version": "2"},
                        {"lot": "L3", "recipe_version": "3"}]
        # "Which limits applied to this lot then?"
        limits = _sql(config, "SELECT r.lot, l.low, l.high FROM lot_runs r JOIN recipe_limits l "
                              "ON l.recipe = r.recipe AND l.version = r.recipe_version AND l.kind = 'temp' "
                              "ORDER BY r.start_ts")
        assert limits == [{"lot": "L1", "low": 57.0, "high": 63.0}, {"lot": "L2", "low": 67.0, "high": 73.0},
                          {"lot": "L3", "low": 77.0, "high": 83.0}]

        # Rewriting a version already in effect is refused; the old limits stay.
        recipes.write_text(RECIPES.format(v1=now - 86_400_000, v2=now - 600_000).replace("60.0", "50.0"))
        wait_for(lambda: instance.pipeline.alerting.recipe_reload_errors == 1, what="the refused reload")
        assert "ETCH-A v1 is in effect and was changed" in instance.pipeline.alerting.last_reload_error
        assert instance.pipeline.alerting.book.get("ETCH-A", "3") is not None
    finally:
        instance.stop()


class _Webhook:
    """A real HTTP endpoint that refuses the first `fail` requests with 503."""

    def __init__(self, port: int, fail: int = 0) -> None:
        self.fail, self.attempts, self.received = fail, 0, []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.attempts += 1
                if hook.attempts <= hook.fail:
                    self.send_response(503)
                else:
                    hook.received.append((self.headers["Idempotency-Key"], json.loads(body)))
                    self.send_response(200)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_failing_webhook_gets_every_alert_once_it_recovers_even_across_a_restart(broker, tmp_path):
    port = free_port()
    hook = _Webhook(port, fail=3)
    settings = make_settings(tmp_path, broker, alerts={"rules": [RULE], "webhook_url": f"http://127.0.0.1:{port}/hook",
                                                       "retry_max": "200ms"})
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        for chamber in (1, 2, 3):
            mosquitto_pub(broker, f"fab/etch-01/ch{chamber}/temp", *_readings(now - 9000 + chamber, [50, 95, 40]))
        wait_for(lambda: len(hook.received) >= 6, what="six alerts at the webhook")
        assert hook.attempts >= 3 + 6
        assert [(p["sensor"], p["state"]) for _, p in hook.received] == [
            (f"ch{c}/temp", s) for c in (1, 2, 3) for s in ("raised", "cleared")]
        assert [k for k, _ in hook.received] == [p["id"] for _, p in hook.received]
        assert len({k for k, _ in hook.received}) == 6

        # Down while an excursion happens and while fabtier stops: the alerts wait in the log.
        hook.stop()
        mosquitto_pub(broker, "fab/etch-01/ch4/temp", *_readings(now - 5000, [50, 95, 40]))
        wait_for(lambda: instance.pipeline.alerting.raised == 4 and instance.pipeline.alerting.cleared == 4,
                 what="the excursion to be judged")
        wait_for(lambda: instance.pipeline.metrics_snapshot()["alerts"]["sinks"]["webhook"]["failures"] > 0,
                 what="a failed delivery")
    finally:
        instance.stop()
    assert len(hook.received) == 6
    hook = _Webhook(port)
    instance = Instance(settings).start()
    try:
        wait_for(lambda: len(hook.received) >= 2, what="the waiting alerts after the restart")
        assert [(p["sensor"], p["state"]) for _, p in hook.received] == [("ch4/temp", "raised"), ("ch4/temp", "cleared")]
    finally:
        instance.stop()
        hook.stop()


def test_sns_sink_against_moto_server_delivers_after_an_outage(broker, tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", "eu-west-1")):
        monkeypatch.setenv(name, value)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    sns = boto3.client("sns", region_name="eu-west-1", endpoint_url=endpoint)
    sqs = boto3.client("sqs", region_name="eu-west-1", endpoint_url=endpoint)
    arn = sns.create_topic(Name="fab-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
    server.stop()  # SNS is unreachable from here on; moto keeps its state in this process

    settings = make_settings(tmp_path, broker, alerts={"rules": [RULE], "sns_topic_arn": arn,
                                                       "sns_endpoint_url": endpoint, "retry_max": "200ms"})
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        mosquitto_pub(broker, "fab/cvd-02/ch1/temp", *_readings(now - 3000, [50, 99, 50]))
        wait_for(lambda: instance.pipeline.metrics_snapshot()["alerts"]["sinks"]["sns"]["failures"] >= 1,
                 what="a failed publish")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        got: list[dict] = []

        def drain() -> bool:
            for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
                got.append(json.loads(json.loads(m["Body"])["Message"]))
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
            return len(got) >= 2
        wait_for(drain, what="two alerts through SNS")
        assert [(p["machine"], p["sensor"], p["state"], p["value"]) for p in got] == [
            ("cvd-02", "ch1/temp", "raised", 99), ("cvd-02", "ch1/temp", "cleared", 50)]
    finally:
        instance.stop()
        server.stop()
