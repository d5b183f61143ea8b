"""A store that fails: ingestion slows instead of losing data, memory stays bounded, and
everything arrives exactly once when the store recovers."""

from __future__ import annotations

import json
import time

from fabtier.reader import query
from fabtier.runner import Instance
from tests.conftest import make_settings, mosquitto_pub, wait_for

BATCH = 200


def test_a_failing_store_holds_acknowledgements_back_and_loses_nothing(broker, tmp_path):
    lake = tmp_path / "lake"
    settings = make_settings(tmp_path, broker, cold={"seal_every": "1s", "store": lake.as_uri()},
                             ingest={"max_unsealed": "100KiB"}, broker={"receive_maximum": 10})
    instance = Instance(settings).start()
    blocker = lake / "raw"
    blocker.write_text("a file where the store needs a directory: every seal fails")
    try:
        now = instance.pipeline.clock.now_ms()
        batches, expected = [], set()
        for b in range(300):  # 60,000 readings, about 1.2 MB in memory: far over the limit
            ts = [now - 60_000 + b * BATCH + j for j in range(BATCH)]
            expected.update(("etch-03", "ch1/temp", t) for t in ts)
            batches.append(json.dumps({"ts": ts, "sensor": ["ch1/temp"] * BATCH, "v": [1.25] * BATCH}))
        mosquitto_pub(broker, "fab/etch-03", *batches)  # the broker takes them all

        metrics = instance.pipeline.metrics
        wait_for(lambda: metrics.backpressure, what="backpressure")
        time.sleep(0.5)
        taken, acked, held = metrics.messages, metrics.acked, instance.pipeline.unsealed.bytes
        time.sleep(1.5)  # stalled, and it stays stalled: the broker keeps the rest
        assert metrics.backpressure and metrics.seal_failures > 0
        assert metrics.messages == taken < len(batches) and metrics.acked == acked < taken
        assert instance.pipeline.unsealed.bytes == held
        # Bounded: the limit plus one micro-batch, which is at most receive_maximum messages.
        assert held <= 100 * 1024 + 21 * BATCH * 10
        assert instance.pipeline.metrics_snapshot()["acks_withheld"] == taken - acked

        blocker.unlink()  # the store recovers
        wait_for(lambda: metrics.acked >= len(batches), timeout=60, what="every message acknowledged")
        assert not metrics.backpressure
        table = query(settings, "SELECT machine, sensor, epoch_ms(ts) AS ms FROM readings")
        rows = list(zip(*(table.column(c).to_pylist() for c in ("machine", "sensor", "ms")), strict=True))
        assert len(rows) == len(set(rows)) == len(expected) and set(rows) == expected
    finally:
        instance.stop()
