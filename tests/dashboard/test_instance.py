"""The dashboard's client of the instance: the token goes along, and a route the instance does
not have yet is replaced by SQL (alerts) or the dashboard's own store (acknowledgements)."""

from __future__ import annotations

import asyncio

from dashboard.acks import AckStore
from dashboard.instance import Instance
from tests.dashboard.fakeinstance import FakeInstance


def _instance(fake: FakeInstance, tmp_path, token: str = "") -> Instance:
    return Instance("http://instance", token=token, acks=AckStore(tmp_path / "acks.jsonl"), transport=fake.transport)


def test_an_older_instance_answers_alerts_from_sql_and_the_dashboard_keeps_the_acks(tmp_path):
    fake = FakeInstance(routes=("/health", "/sql"), token="t0k")

    async def run():
        instance = _instance(fake, tmp_path, token="t0k")
        open_ = await instance.alerts(state="open")
        ack = await instance.ack("w0:2", who="kim", note="checked")
        again = await instance.alerts(state="recent")
        await instance.close()
        return open_, ack, again
    open_, ack, again = asyncio.run(run())
    assert [a["id"] for a in open_] == ["w0:2"]
    assert ack["who"] == "kim" and ack["by"] == "dashboard"
    assert next(a for a in again if a["id"] == "w0:2")["ack"]["note"] == "checked"
    assert "/alerts" not in fake.paths() and "/sql" in fake.paths()
    assert all(r.headers["authorization"] == "Bearer t0k" for r in fake.requests)
    assert AckStore(tmp_path / "acks.jsonl").get("w0:2")["who"] == "kim"


def test_a_newer_instance_lists_alerts_and_takes_acks_itself(tmp_path):
    fake = FakeInstance(routes=("/health", "/sql", "/alerts", "/alerts/{id}/ack"))

    async def run():
        instance = _instance(fake, tmp_path)
        ack = await instance.ack("w0:2", who="kim", note="n")
        listed = await instance.alerts(state="open")
        await instance.close()
        return ack, listed
    ack, listed = asyncio.run(run())
    assert ack["by"] == "instance" and ack["who"] == "kim"
    assert listed[0]["ack"]["who"] == "kim"
    assert "/alerts/w0:2/ack" in fake.paths() or "/alerts/w0%3A2/ack" in [r.url.raw_path.decode() for r in fake.requests]
    assert not (tmp_path / "acks.jsonl").exists()
