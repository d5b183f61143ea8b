"""GET /bands: a machine's recent buckets from the hot ring, the same numbers as the
dashboard's SQL over `readings`, and `complete` false when the ring lacks part of the span."""

import dataclasses
import json
import urllib.error
import urllib.request

import pytest

from dashboard.views import bands_sql
from fabtier.runner import Instance
from tests.conftest import make_settings, wait_for


def _get(instance, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{instance.api_url}{path}", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _sql(instance, statement: str) -> list[dict]:
    request = urllib.request.Request(f"{instance.api_url}/sql?format=json", data=statement.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _start(tmp_path, budget=None):
    from fabtier.broker import LocalBroker
    broker = LocalBroker(tmp_path / "broker").start()
    settings = make_settings(tmp_path, broker)
    if budget is not None:
        settings = dataclasses.replace(settings, hot=dataclasses.replace(settings.hot, memory_budget=budget))
    return broker, Instance(settings).start()


@pytest.fixture
def instance(tmp_path):
    broker, started = _start(tmp_path)
    yield started
    started.stop()
    broker.stop()


def _key(row):
    return row["sensor"], row["t"]


def test_the_rings_buckets_are_sqls(instance):
    now = instance.pipeline.clock.now_ms()
    since = now - 60_000
    ts = [now - 50_000 + 137 * i for i in range(300)]  # 41 s of readings over 1 s buckets
    instance.pipeline.process([
        ("fab/etch-01", json.dumps({"ts": ts, "sensor": ["a"] * 300, "v": [float(i % 17) for i in range(300)]}).encode(),
         0, 0),
        ("fab/etch-01", json.dumps({"ts": ts[:50], "sensor": ["b"] * 50, "v": [-1.5 * i for i in range(50)]}).encode(),
         0, 0),
        ("fab/cvd-01", json.dumps({"ts": ts[:5], "sensor": ["a"] * 5, "v": [9.0] * 5}).encode(), 0, 0)])
    wait_for(lambda: len(_sql(instance, "SELECT 1 FROM readings")) == 355, what="every reading stored")

    status, answer = _get(instance, f"/bands?machine=etch-01&since={since}&bucket_ms=1000")
    assert status == 200 and answer["complete"] is True and answer["bucket_ms"] == 1000
    want = _sql(instance, bands_sql("etch-01", since, 1000))
    got = sorted(answer["rows"], key=_key)
    assert [_key(r) for r in got] == [_key(r) for r in want] and {r["sensor"] for r in got} == {"a", "b"}
    for mine, theirs in zip(got, want, strict=True):
        assert (mine["mn"], mine["mx"], mine["n"]) == (theirs["mn"], theirs["mx"], theirs["n"])
        assert mine["av"] == pytest.approx(theirs["av"], rel=1e-12, abs=1e-12)

    later = ts[200]  # a poll that resumes from a later bucket gets only those
    _, part = _get(instance, f"/bands?machine=etch-01&since={later}&bucket_ms=1000")
    assert part["rows"] and min(r["t"] for r in part["rows"]) >= later - later % 1000
    assert sum(r["n"] for r in part["rows"]) == 100  # sensor a's last 100; b ended before

    status, unknown = _get(instance, f"/bands?machine=nobody&since={since}&bucket_ms=1000")
    assert status == 200 and unknown["rows"] == [] and unknown["complete"] is False
    status, wide = _get(instance, f"/bands?machine=etch-01&since={since - 10**9}&bucket_ms=1")
    assert status == 200 and sum(r["n"] for r in wide["rows"]) == 350  # a bucket per reading at most
    status, error = _get(instance, "/bands?machine=etch-01&since=12&bucket_ms=1000")
    assert status == 400 and error["parameter"] == "since"


def test_a_span_the_ring_lost_part_of_is_not_complete(tmp_path):
    broker, instance = _start(tmp_path, budget=16 * 4 * 64)  # 4 readings a sensor
    try:
        now = instance.pipeline.clock.now_ms()
        busy = [now - 10_000 + 1000 * i for i in range(10)]
        instance.pipeline.process([("fab/etch-01", json.dumps(
            {"ts": busy, "sensor": ["busy"] * 10, "v": list(range(10))}).encode(), 0, 0)])
        wait_for(lambda: len(instance.pipeline.sensors()) == 1, what="the sensor to be known")
        _, answer = _get(instance, f"/bands?machine=etch-01&since={now - 60_000}&bucket_ms=1000")
        assert answer["complete"] is False and sum(r["n"] for r in answer["rows"]) == 4
        _, recent = _get(instance, f"/bands?machine=etch-01&since={busy[6]}&bucket_ms=1000")
        assert recent["complete"] is True and sum(r["n"] for r in recent["rows"]) == 4
    finally:
        instance.stop()
        broker.stop()
