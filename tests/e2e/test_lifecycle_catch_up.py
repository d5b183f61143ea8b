"""The process is stopped through several scheduled periods; on restart the missed work is
caught up, and `job_runs` and `tier_moves` tell what happened."""

from __future__ import annotations

import json
import signal
import time

from fabtier.reader import query
from tests.conftest import (
    fabtier_cli,
    make_settings,
    mosquitto_pub,
    start_fabtier_run,
    wait_for,
    wait_ready,
    write_config,
)

MINUTE = 60_000




def _batch(machine_ts: int, n: int, offset: float) -> str:
    return json.dumps({"ts": [machine_ts + i * 1000 for i in range(n)], "sensor": ["ch1/temp"] * n,
                       "v": [offset + i for i in range(n)]})


def _minutes(settings) -> dict:
    table = query(settings, "SELECT epoch_ms(minute) AS m, n, \"min\", \"max\" FROM readings_1m ORDER BY m")
    return {r["m"]: (r["n"], r["min"], r["max"]) for r in table.to_pylist()}


def test_stopped_through_several_periods_then_caught_up_on_restart(broker, tmp_path):
    settings = make_settings(tmp_path, broker, cold={"seal_every": "1s"})
    config = write_config(settings, tmp_path / "fabtier.toml")
    # Minutes older than 5 minutes leave the warm store for agg_1m.
    config.write_text(config.read_text() + '[warm]\nrollup_every = "1s"\nage_out_every = "1s"\nretention = "5m"\n')
    base = (int(time.time() * 1000) // MINUTE - 20) * MINUTE  # twenty minutes ago, on a minute

    process = start_fabtier_run(config)
    try:
        wait_ready(settings)
        mosquitto_pub(broker, "fab/etch-01", _batch(base, 30, 0.0))
        wait_for(lambda: _minutes(settings).get(base) == (30, 0.0, 29.0), what="the first minute rolled up")
    finally:
        process.send_signal(signal.SIGKILL)  # no clean stop: nothing sealed or rolled up on the way out
        process.wait()

    # While fabtier is down (several 1 s periods), more data reaches the broker: a new minute and
    # late readings of the minute already rolled up (and by now due for age-out).
    mosquitto_pub(broker, "fab/etch-01", _batch(base + MINUTE, 10, 100.0), _batch(base + 30_000, 5, -50.0))
    time.sleep(4)

    process = start_fabtier_run(config)
    try:
        wait_ready(settings)
        wait_for(lambda: _minutes(settings).get(base + MINUTE) == (10, 100.0, 109.0)
                 and _minutes(settings).get(base) == (35, -50.0, 29.0), timeout=60,
                 what="both minutes right after the restart")
        runs = query(settings, "SELECT job, missed FROM job_runs WHERE \"trigger\" = 'start-up'").to_pylist()
        caught_up = {r["job"]: r["missed"] for r in runs if r["missed"] > 0}
        # Each job had completed before the kill; several of its 1 s periods passed while down.
        assert set(caught_up) == {"seal", "rollup", "age_out"} and min(caught_up.values()) >= 3, runs
        moves = query(settings, "SELECT job, what, rows FROM tier_moves ORDER BY \"at\"").to_pylist()
        assert {("seal", "raw"), ("age_out", "agg_1m")} <= {(m["job"], m["what"]) for m in moves}
        assert sum(m["rows"] for m in moves if m["what"] == "raw") == 45
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    # After the stop, read from the stores directly: the same minutes, each once.
    rows = json.loads(fabtier_cli("sql", "SELECT epoch_ms(minute) AS m, n FROM readings_1m ORDER BY m",
                                  "--config", str(config), "--format", "json").stdout)
    assert rows == [{"m": base, "n": 35}, {"m": base + MINUTE, "n": 10}]
