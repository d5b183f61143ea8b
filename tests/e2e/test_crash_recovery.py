"""kill -9 in the middle of a QoS 1 stream: after a restart every reading is there once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from fabtier.reader import query
from tests.conftest import (
    make_settings,
    mosquitto_pub,
    start_fabtier_run,
    wait_for,
    wait_ready,
    write_config,
)


def _metrics(settings) -> dict:
    from fabtier.reader import _request
    return json.loads(_request(settings, "GET", "/metrics", timeout=5)[1])


def test_kill_9_mid_stream_then_restart_loses_and_doubles_nothing(broker, tmp_path):
    settings = make_settings(tmp_path, broker, cold={"seal_every": "2s"})
    config = write_config(settings, tmp_path / "fabtier.toml")
    process = start_fabtier_run(config)
    try:
        wait_ready(settings)
        now = int(time.time() * 1000)
        batches, expected = [], set()
        for b in range(400):
            ts = [now - 120_000 + b * 50 + j for j in range(50)]
            sensors = [f"s{j % 5}" for j in range(50)]
            expected.update(("etch-07", s, t) for s, t in zip(sensors, ts, strict=True))
            batches.append(json.dumps({"ts": ts, "sensor": sensors, "v": [float(j) for j in range(50)]}))

        publisher = threading.Thread(target=lambda: [mosquitto_pub(broker, "fab/etch-07", *batches[i:i + 20])
                                                     for i in range(0, len(batches), 20)])
        publisher.start()
        wait_for(lambda: _metrics(settings)["messages"] >= 100, what="part of the stream to arrive")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        publisher.join()  # the broker accepted all of it; fabtier was down for part of it

        process = start_fabtier_run(config)
        wait_ready(settings)
        wait_for(lambda: query(settings, "SELECT count(*) AS n FROM readings").column("n")[0].as_py()
                 >= len(expected), timeout=60, what="every reading after the restart")
        time.sleep(1.0)  # any duplicate redelivery would arrive now
        table = query(settings, "SELECT machine, sensor, epoch_ms(ts) AS ms FROM readings")
        rows = list(zip(*(table.column(c).to_pylist() for c in ("machine", "sensor", "ms")), strict=True))
        assert len(rows) == len(set(rows)) == len(expected)
        assert set(rows) == expected
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    # After a clean stop everything is in the lake, still once.
    table = query(settings, "SELECT count(*) AS n, count(DISTINCT (machine, sensor, ts)) AS d FROM readings")
    assert table.column("n")[0].as_py() == table.column("d")[0].as_py() == len(expected)
