"""Two ingest processes on one shared subscription, and a broker restart with unacknowledged
messages in flight: every reading is stored exactly once."""

from __future__ import annotations

import json
import threading

import pyarrow as pa

from fabtier.ingestion import Ingestor
from fabtier.reader import query
from fabtier.runner import Instance
from tests.conftest import make_settings, mosquitto_pub, wait_for
from tiers.cold import ColdLake
from tiers.store import settings_store


def _batches(machine: str, count: int, now: int, size: int = 100):
    batches, expected = [], set()
    for b in range(count):
        ts = [now - 120_000 + b * size + j for j in range(size)]
        sensors = [f"s{j % 4}" for j in range(size)]
        expected.update((machine, s, t) for s, t in zip(sensors, ts, strict=True))
        batches.append(json.dumps({"ts": ts, "sensor": sensors, "v": [0.5] * size}))
    return batches, expected


def _rows(settings):
    table = query(settings, "SELECT machine, sensor, epoch_ms(ts) AS ms FROM readings")
    return list(zip(*(table.column(c).to_pylist() for c in ("machine", "sensor", "ms")), strict=True))


def test_two_processes_on_a_shared_subscription_store_every_reading_once(broker, tmp_path):
    lake = (tmp_path / "lake").as_uri()
    members = [make_settings(tmp_path / name, broker, broker={"share_group": "ingest"},
                             cold={"store": lake, "writer_id": name}) for name in ("a", "b")]
    instances = [Instance(s).start() for s in members]
    try:
        now = instances[0].pipeline.clock.now_ms()
        batches, expected = _batches("cvd-04", 400, now)
        mosquitto_pub(broker, "fab/cvd-04", *batches)
        wait_for(lambda: sum(i.pipeline.metrics.acked for i in instances) >= len(batches),
                 what="both members to take the whole stream")
        taken = [i.pipeline.metrics.messages for i in instances]
        assert sum(taken) == len(batches) and all(taken), taken  # both got a share, nobody got a copy
    finally:
        for instance in instances:
            instance.stop()  # seals into the shared lake
    rows = _rows(members[0])
    assert len(rows) == len(set(rows)) == len(expected) and set(rows) == expected
    files = {p.name.split("-")[0] for p in (tmp_path / "lake" / "raw").rglob("*.parquet")}
    assert files == {"a", "b"}


def test_a_broker_restart_with_unacknowledged_messages_in_flight_loses_and_doubles_nothing(
        broker, tmp_path, monkeypatch):
    """The broker stops while it has QoS 1 messages in flight to fabtier (taken and logged,
    not yet committed, so not acknowledged) and more queued for its session. mosquitto
    persists both (`persistence true`, saved on SIGTERM); after the restart it delivers the
    in-flight ones again, fabtier drops them as duplicates, and every reading is in the lake
    exactly once."""
    # A slow disk: while `fsync_allowed` is clear the committer thread waits before its next
    # group commit, so messages are taken and logged but neither durable nor acknowledged.
    fsync_allowed = threading.Event()
    fsync_allowed.set()
    commit_and_ack = Ingestor.commit_and_ack

    def slow_commit(self: Ingestor) -> None:
        if threading.current_thread().name == "wal-commit":
            fsync_allowed.wait(60)
        commit_and_ack(self)
    monkeypatch.setattr(Ingestor, "commit_and_ack", slow_commit)

    settings = make_settings(tmp_path, broker, broker={"receive_maximum": 50})
    instance = Instance(settings).start()
    metrics = instance.pipeline.metrics
    try:
        now = instance.pipeline.clock.now_ms()
        before, expected_before = _batches("etch-04", 100, now)
        during, expected_during = _batches("etch-05", 300, now)
        after, expected_after = _batches("etch-06", 300, now)
        mosquitto_pub(broker, "fab/etch-04", *before)
        wait_for(lambda: metrics.acked == len(before), what="the first part acknowledged")

        fsync_allowed.clear()
        # The broker accepts all of it (mosquitto_pub gets its PUBACKs); it sends fabtier up
        # to its receive maximum and queues the rest for the session.
        mosquitto_pub(broker, "fab/etch-05", *during)
        wait_for(lambda: metrics.messages >= len(before) + 20, what="fabtier to take messages it cannot ack yet")
        broker.stop()
        assert (broker.directory / "mosquitto.db").exists()  # sessions and queues saved
        ingestor = instance.pipeline.ingestor
        wait_for(lambda: ingestor.inbox_length == 0, what="the inbox to be taken")
        in_flight = metrics.messages - len(before)
        # At the stop, every message of the second part that fabtier had taken was unacknowledged.
        assert metrics.acked == len(before) and 0 < in_flight < len(during)
        assert metrics.duplicates_dropped == 0

        broker.start()  # same port, same persistence directory
        mosquitto_pub(broker, "fab/etch-06", *after)
        # The broker delivers the unacknowledged messages again on the resumed session: every
        # reading of them is a duplicate now (still held: nothing acknowledged yet).
        wait_for(lambda: metrics.duplicates_dropped >= 100 * in_flight, timeout=60,
                 what="the in-flight messages delivered again after the restart")
        assert metrics.acked == len(before)
        fsync_allowed.set()

        expected = expected_before | expected_during | expected_after
        wait_for(lambda: len(set(_rows(settings))) >= len(expected), timeout=60,
                 what="every reading after the restart")
        wait_for(lambda: metrics.acked >= metrics.messages, what="everything taken acknowledged")
        assert metrics.messages >= len(before) + len(during) + len(after) + in_flight  # redeliveries counted
        rows = _rows(settings)
        assert len(rows) == len(set(rows)) and set(rows) == expected
    finally:
        fsync_allowed.set()
        instance.stop()  # seals everything into the lake
    table = ColdLake(settings_store(settings), writer_id=settings.cold.writer_id).read_raw()
    stored = list(zip(table.column("machine").to_pylist(), table.column("sensor").to_pylist(),
                      table.column("ts").cast(pa.int64()).to_pylist(), strict=True))
    assert len(stored) == len(set(stored)) == len(expected) and set(stored) == expected
