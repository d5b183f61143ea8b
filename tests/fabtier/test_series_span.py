"""`/series` says when the hot ring cannot give the whole span asked for: readings pushed out
by `[hot] memory_budget`, or older than this run, are in SQL's tiers but not in the ring."""

import dataclasses
import json
import urllib.request

import pytest

from fabtier.runner import Instance
from tests.conftest import make_settings, wait_for


def _series(instance, sensor: str, minutes: float) -> dict:
    url = f"{instance.api_url}/series?machine=etch-01&sensor={sensor}&minutes={minutes}&points=100"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def small_ring(tmp_path):
    from fabtier.broker import LocalBroker
    broker = LocalBroker(tmp_path / "broker").start()
    settings = make_settings(tmp_path, broker)
    # 4 readings a sensor for the first 64 sensors: a busy sensor wraps at once.
    settings = dataclasses.replace(settings, hot=dataclasses.replace(settings.hot, memory_budget=16 * 4 * 64))
    instance = Instance(settings).start()
    yield instance
    instance.stop()
    broker.stop()


def test_a_span_the_budget_cut_short_is_flagged_with_where_the_ring_starts(small_ring):
    instance = small_ring
    now = instance.pipeline.clock.now_ms()
    busy = [now - 10_000 + 1000 * i for i in range(10)]  # 10 readings: the ring keeps the last 4
    instance.pipeline.process([("fab/etch-01", json.dumps(
        {"ts": busy + [now - 5000], "sensor": ["busy"] * 10 + ["quiet"], "v": list(range(11))}).encode(), 0, 0)])
    wait_for(lambda: len(instance.pipeline.sensors()) == 2, what="both sensors to be known")

    answer = _series(instance, "busy", minutes=1)
    assert answer["shorter_than_asked"] is True
    assert answer["complete_from_ms"] == busy[6] and answer["ts"] == busy[6:]

    quiet = _series(instance, "quiet", minutes=1)  # one reading, nothing pushed out
    assert quiet["shorter_than_asked"] is False and quiet["complete_from_ms"] <= now - 60_000
    # Longer ago than the ring has covered since this run started: flagged as well.
    assert _series(instance, "quiet", minutes=24 * 60)["shorter_than_asked"] is True
