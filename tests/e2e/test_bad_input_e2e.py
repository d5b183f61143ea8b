"""Bad input through a real mosquitto into a running instance (issue 14).

Hypothesis draws a batch of bad messages (not JSON, wrong types, NaN, huge numbers, deep
nesting, missing fields, wrong topic shapes, arbitrary bytes, one over `max_payload`); they
are published with QoS 1, each followed by good readings, to a running instance. Then:
every good reading is in `readings` exactly once, every bad message is in `quarantine` with a
reason, and the instance is healthy, with no internal error.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fabtier.runner import Instance
from ingest.assemble import payload_text
from ingest.codec import Limits, PayloadError, decode_context, decode_message
from tests.conftest import fabtier_cli, make_settings, wait_for, write_config
from tests.ingest.test_codec_properties import (
    near_valid_batch,
    near_valid_context,
    near_valid_single,
)

# Topics the instance's subscriptions (`fab/#`, `fab-ctx/#`) deliver, of every shape.
bad_topics = st.sampled_from([
    "fab", "fab/", "fab//ch1/temp", "fab/etch-01/", "fab/etch-01//temp", "fab/etch-01/ch1/temp/", "fab-ctx",
    "fab-ctx/", "fab-ctx/etch-01/extra", "fab/" + "m" * 300, "fab/etch-01/" + "s" * 300,
])
good_topics = st.sampled_from(["fab/etch-01/ch1/temp", "fab/cvd-02", "fab-ctx/etch-01"])
bad_messages = (st.tuples(good_topics, st.binary(max_size=100) | near_valid_single() | near_valid_batch()
                          | near_valid_context())
                | st.tuples(bad_topics, near_valid_single() | near_valid_batch()))


def fixed_bad(now_ms: int) -> list[tuple[str, bytes]]:
    """The regressions of issue 14, and what hypothesis does not draw in a small batch."""
    return [
        ("fab/etch-01/ch1/temp", b'{"ts": 18446744073709551615, "v": 1.5}'),  # ended the ingest thread
        ("fab-ctx", b'{"ts": [%d], "sensor": ["a"], "v": [1]}' % now_ms),  # was stored as machine "ctx"
        ("fab/etch-01/ch1/temp", b'{"ts": 1, "v": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("fab/cvd-02", b'{"ts": [1], "sensor": ["a"], "v": [' + b"1" * 2_000_000 + b"]}"),  # over max_payload
    ]


def is_bad(topic: str, payload: bytes, now_ms: int, limits: Limits) -> bool:
    try:
        if topic.startswith("fab-ctx/") or topic == "fab-ctx":
            decode_context(topic, payload, root="fab-ctx", now_ms=now_ms, limits=limits)
        else:
            decode_message(topic, payload, root="fab", now_ms=now_ms, limits=limits)
    except PayloadError:
        return True
    return False


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        sent = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in sent:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _sql(config, statement: str) -> list[dict]:
    return json.loads(fabtier_cli("sql", statement, "--config", str(config), "--format", "json").stdout)


def test_bad_messages_are_quarantined_and_never_hold_up_good_readings(broker, tmp_path):
    settings_ = make_settings(tmp_path, broker)
    config = write_config(settings_, tmp_path / "fabtier.toml")
    instance = Instance(settings_).start()
    pipeline = instance.pipeline
    limits = Limits(max_future_ms=int(settings_.ingest.max_future * 1000),
                    max_late_ms=int(settings_.ingest.max_late * 1000), max_payload=settings_.ingest.max_payload)
    expected: dict[tuple[str, str, int], float] = {}
    all_bad: list[tuple[str, bytes]] = []
    sent = 0

    # One instance for every example: each publishes its batch of bad messages, each followed
    # by good readings; the answers are checked once, over all of them.
    @settings(max_examples=int(os.environ.get("FABTIER_BAD_INPUT_E2E_EXAMPLES", "4")), deadline=None,
              phases=[Phase.explicit, Phase.generate],  # state accumulates: no shrinking
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(drawn=st.lists(bad_messages, min_size=10, max_size=25))
    def publish_batch(drawn):
        nonlocal sent
        now = pipeline.clock.now_ms()
        bad = [m for m in (fixed_bad(now) if not all_bad else []) + drawn if is_bad(*m, now, limits)]
        messages: list[tuple[str, bytes]] = []
        for message in bad:
            i = len(all_bad)
            all_bad.append(message)
            messages.append(message)
            ts, value = now - 60_000 + i * 10, round(i * 0.37 - 4, 2)
            if i % 2:  # a single reading after it
                messages.append(("fab/good-01/ch1/temp", json.dumps({"ts": ts, "v": value}).encode()))
                expected[("good-01", "ch1/temp", ts)] = value
            else:  # a batch after it
                batch = {"ts": [ts, ts], "sensor": ["ch1/temp", "rf/forward_power"], "v": [value, -value]}
                messages.append(("fab/good-02", json.dumps(batch).encode()))
                expected.update({("good-02", "ch1/temp", ts): value, ("good-02", "rf/forward_power", ts): -value})
        publish_all(broker.port, messages)
        sent += len(messages)
        wait_for(lambda: pipeline.metrics.messages >= sent, timeout=60, what="every message to arrive")
        wait_for(lambda: pipeline.metrics.acked >= sent, timeout=60, what="every message to be acknowledged")

    try:
        publish_batch()
        assert len(all_bad) >= 30, "the strategies should draw bad messages"

        rows = _sql(config, "SELECT machine, sensor, epoch_ms(ts) AS ms, value FROM readings")
        keys = [(r["machine"], r["sensor"], r["ms"]) for r in rows]
        assert len(keys) == len(set(keys)), "a reading is stored twice"
        assert {k: r["value"] for k, r in zip(keys, rows, strict=True)} == expected

        quarantined = _sql(config, "SELECT topic, reason, payload FROM quarantine")
        assert all(q["reason"] and not q["reason"].startswith("internal error") for q in quarantined), [
            q["reason"] for q in quarantined]
        assert Counter((q["topic"], q["payload"]) for q in quarantined) == Counter(
            (topic, payload_text(payload)) for topic, payload in all_bad)

        with urllib.request.urlopen(f"{instance.api_url}/health", timeout=10) as answer:
            assert answer.status == 200 and json.loads(answer.read())["status"] == "ready"
        assert pipeline.metrics.internal_errors == 0
    finally:
        instance.stop()
