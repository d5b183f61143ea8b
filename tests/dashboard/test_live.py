"""The feeds: a machine's bands with the recipe limits that applied, the overview's rows, the
alerts pushed from the broker; polled only while watched, fanned out to every watcher."""

from __future__ import annotations

import asyncio
import json

import pytest

from dashboard import live as live_module
from dashboard.instance import Instance
from dashboard.live import Hub, Live
from tests.dashboard.fakeinstance import NOW, FakeInstance


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    monkeypatch.setattr(live_module, "now_ms", lambda: NOW)


def _events(messages: list[bytes]) -> list[tuple[str, object]]:
    out = []
    for message in messages:
        lines = dict(line.split(": ", 1) for line in message.decode().strip().split("\n") if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


async def _take(stream, count: int) -> list[bytes]:
    got = []
    async for message in stream:
        got.append(message)
        if len(got) >= count:
            break
    return got


def test_a_machine_stream_starts_with_bands_limits_and_open_alerts_and_stops_polling_when_left():
    fake = FakeInstance()

    async def run():
        live = Live(Instance("http://instance", transport=fake.transport))
        stream = live.watch("machine:etch-01")
        got = await _take(stream, 3)  # retry, snapshot, broker
        await stream.aclose()
        polls = len(fake.requests)
        await asyncio.sleep(1.2)
        return got, polls, live
    got, polls, live = asyncio.run(run())
    assert got[0] == b"retry: 1000\n\n"
    events = dict(_events(got))
    snap = events["snapshot"]
    temp = snap["sensors"]["ch1/temp"]
    assert temp["mn"] == [59.0, 59.5] and temp["mx"] == [61.0, 62.0] and temp["av"] == [60.0, 60.5]
    assert temp["lo"] == [55.0, 55.0] and temp["hi"] == [65.0, 65.0]
    assert snap["run"]["lot"] == "L1" and snap["step"] == "heat"
    assert [a["id"] for a in snap["open"]] == ["w0:2"]
    assert len(fake.requests) == polls, "the feed kept polling with nobody watching"
    assert live.hub.watchers() == 0


def test_the_overview_rows_and_an_alert_from_the_broker_reach_every_watcher():
    fake = FakeInstance()

    async def run():
        live = Live(Instance("http://instance", transport=fake.transport))
        overview = live.watch("overview")
        first = await _take(overview, 3)
        alerts = live.watch("alerts")
        await _take(alerts, 2)
        live.on_alert({"id": "w0:9", "machine": "etch-01", "sensor": "ch1/temp", "rule": "hot", "state": "raised",
                       "ts": 1, "raised_at": 2})
        pushed_alerts = await _take(alerts, 2)
        pushed_overview = await _take(overview, 1)
        await overview.aclose()
        await alerts.aclose()
        return first, pushed_alerts, pushed_overview, live
    first, pushed_alerts, pushed_overview, live = asyncio.run(run())
    rows = dict(_events(first))["overview"]["machines"]
    assert rows[0]["machine"] == "etch-01" and rows[0]["lot"] == "L1" and rows[0]["step"] == "heat"
    assert rows[0]["alerts"] == 1 and rows[0]["spark"]["v"] == [1.0, 2.0]
    assert any(e == "alert" and d["id"] == "w0:9" for e, d in _events(pushed_alerts))
    assert _events(pushed_overview)[0][0] in ("alert", "overview")
    assert "w0:9" in [a["id"] for a in live.alerts.open_for("etch-01")]


def test_a_slow_watcher_loses_its_oldest_events_not_the_others():
    async def run():
        hub = Hub()
        slow, fast = hub.subscribe("c", maxsize=2), hub.subscribe("c", maxsize=10)
        for i in range(5):
            hub.publish("c", "e", i)
        return [slow.get_nowait() for _ in range(slow.qsize())], fast.qsize()
    slow, fast = asyncio.run(run())
    assert [json.loads(m.split(b"data: ")[1]) for m in slow] == [3, 4] and fast == 5


@pytest.mark.parametrize("complete", [True, False])
def test_a_machines_bands_come_from_the_ring_unless_it_lacks_part_of_the_span(complete):
    fake = FakeInstance(routes=("/health", "/sql", "/bands"))
    fake.ring_complete = complete

    async def run():
        live = Live(Instance("http://instance", transport=fake.transport))
        stream = live.watch("machine:etch-01")
        got = await _take(stream, 3)
        await stream.aclose()
        return got
    snap = dict(_events(asyncio.run(run())))["snapshot"]
    temp = snap["sensors"]["ch1/temp"]
    bands_sql = [r for r in fake.requests if r.url.path == "/sql" and b"min(value)" in r.content]
    if complete:  # the ring's buckets, and no SQL statement for them
        assert temp["mn"] == [58.0, 58.5] and temp["mx"] == [63.0, 64.0] and not bands_sql
    else:  # the ring's partial answer is not used: SQL's, which has every tier
        assert temp["mn"] == [59.0, 59.5] and temp["mx"] == [61.0, 62.0] and len(bands_sql) == 1
    assert any(r.url.path == "/bands" for r in fake.requests)
