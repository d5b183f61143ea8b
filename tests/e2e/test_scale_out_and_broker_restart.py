"""Two ingest processes on one shared subscription, and a broker restart mid-stream: every
reading is stored exactly once."""

from __future__ import annotations

import json
import threading

from fabtier.reader import query
from fabtier.runner import Instance
from tests.conftest import make_settings, mosquitto_pub, wait_for


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


def test_a_broker_restart_mid_stream_loses_and_doubles_nothing(broker, tmp_path):
    settings = make_settings(tmp_path, broker)
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        first, expected_first = _batches("etch-05", 300, now)
        second, expected_second = _batches("etch-06", 300, now)
        publisher = threading.Thread(target=mosquitto_pub, args=(broker, "fab/etch-05", *first))
        publisher.start()
        publisher.join()
        broker.stop()  # mosquitto saves its sessions (and our unacknowledged messages) on the way out
        broker.start()
        mosquitto_pub(broker, "fab/etch-06", *second)
        wait_for(lambda: instance.pipeline.metrics.acked >= len(first) + len(second) or
                 len(set(_rows(settings))) >= len(expected_first) + len(expected_second),
                 timeout=60, what="the stream after the restart")
        rows = _rows(settings)
        assert len(rows) == len(set(rows))
        assert set(rows) == expected_first | expected_second
    finally:
        instance.stop()
