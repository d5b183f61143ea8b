"""Retrieval on S3 end to end: `fabtier run` against moto's server through the proxy that holds
restores in progress (tests/tiers/test_restore_s3.py), `fabtier retrieve` through its API,
a kill -9 while the restores run, and after the release every archived reading in `readings`
exactly once, beside cold and unsealed ones; two overlapping jobs ask S3 once per object;
the jobs are announced retained on MQTT; expired copies leave `readings` again."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from core.clock import ManualClock
from core.records import DEEP_ARCHIVE, GLACIER
from fabtier.pipeline import Pipeline
from lifecycle.scheduler import runner_for
from tests.conftest import (
    fabtier_cli,
    make_settings,
    mosquitto_pub,
    start_fabtier_run,
    wait_for,
    wait_ready,
)
from tiers.store import S3Store

HOUR = 3_600_000
T0 = 1_699_956_000_000  # 2023-11-14T10:00Z
MACHINES = ("etch-01", "etch-02")
ROWS = "SELECT machine, sensor, epoch_ms(ts) AS t, value FROM readings"
COUNT = "SELECT count(*) AS n, count(DISTINCT (machine, sensor, ts)) AS d FROM readings"


def _batch(start: int, n: int, step: int = 60_000) -> tuple[dict, dict]:
    ts = [start + i * step for i in range(n)]
    body = {"ts": ts + ts, "sensor": ["ch1/temp"] * n + ["rf/power"] * n,
            "v": [20.0 + i / 4 for i in range(n)] + [round(100 + i * 0.1, 1) for i in range(n)]}
    return body, {(s, t): v for s, t, v in zip(body["sensor"], body["ts"], body["v"], strict=True)}


def _sql(config, sql: str) -> list[dict]:
    return json.loads(fabtier_cli("sql", sql, "--config", str(config), "--format", "json").stdout)


def _retrieve(config, *args: str) -> dict:
    return json.loads(fabtier_cli("retrieve", *args, "--json", "--config", str(config)).stdout)


def test_s3_retrieval_held_in_progress_through_a_kill(broker, restore_proxy, tmp_path):
    proxy, bucket = restore_proxy
    store_url = f"s3://{bucket}/lake"
    settings = make_settings(tmp_path, broker, cold={"store": store_url, "endpoint_url": proxy.url},
                             ingest={"max_late": "1d"})
    config = tmp_path / "fabtier.toml"
    config.write_text(
        f'data_dir = "{settings.data_dir}"\n'
        f'[broker]\nurl = "{settings.broker.url}"\nclient_id = "{settings.broker.client_id}"\n'
        f'[api]\nport = {settings.api.port}\n'
        f'[cold]\nseal_every = "1h"\nstore = "{store_url}"\nendpoint_url = "{proxy.url}"\n'
        '[retrieval]\npoll_every = "1s"\nkeep_restored = "2d"\n', encoding="utf-8")

    # Three old hours of two machines, sealed into the lake on S3 and rolled up (warm).
    expected = {}
    pipeline = Pipeline(settings, clock=ManualClock(T0 + 3 * HOUR + 60_000))
    pipeline.open(warm=False)
    try:
        messages = []
        for machine in MACHINES:
            for hour in range(3):
                body, values = _batch(T0 + hour * HOUR, 30)
                messages.append((f"fab/{machine}", json.dumps(body).encode(), 0, 0))
                expected.update({(machine, s, t): v for (s, t), v in values.items()})
        pipeline.process(messages)
        pipeline.wal.commit()
        pipeline.seal()
        assert runner_for(pipeline).run("rollup")["minutes"] == 360
    finally:
        pipeline.close_offline()
    # What S3's lifecycle does with age (moto does not run it): hour 0 to GLACIER, 1 to DEEP_ARCHIVE.
    store = S3Store(bucket, "lake", endpoint_url=proxy.url)
    archived = {}
    for info in store.objects("raw/"):
        hour = int(info.key.split("hour=")[1][:2]) - 10
        if hour < 2:
            store.set_storage_class(info.key, GLACIER if hour == 0 else DEEP_ARCHIVE)
            archived[f"{bucket}/lake/{info.key}"] = hour
    assert set(archived.values()) == {0, 1}

    process = start_fabtier_run(config)
    try:
        wait_ready(settings)
        result = fabtier_cli("sql", COUNT, "--config", str(config), "--format", "json")
        assert json.loads(result.stdout) == [{"n": 120, "d": 120}] and "leaves out" in result.stderr
        first = _retrieve(config, "--from", "2023-11-14T10:00:00Z", "--to", "2023-11-14T12:00:00Z")
        assert first["state"] == "restoring" and len(first["objects"]) == len(archived)
        assert first["eta_s"] == 12 * 3600 and first["cost_usd"] > 0  # DEEP_ARCHIVE at standard: 12 h
        second = _retrieve(config, "--from", "2023-11-14T11:30:00Z", "--to", "2023-11-14T13:00:00Z",
                           "--speed", "bulk")
        assert second["state"] == "restoring" and second["cost_usd"] == 0
        assert {o["key"] for o in second["objects"]} == {
            k.split("/lake/")[1] for k, h in archived.items() if h == 1}
        # One RestoreObject per object: the second job found them being restored.
        assert proxy.calls() == dict.fromkeys(archived, 1)
        assert _sql(config, COUNT) == [{"n": 120, "d": 120}]  # still restoring: not readable yet
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    proxy.release()  # the restores complete while fabtier is down
    process = start_fabtier_run(config)
    try:
        wait_ready(settings)
        wait_for(lambda: _retrieve(config, "--status", second["id"])["state"] == "ready"
                 and _retrieve(config, "--status", first["id"])["state"] == "ready",
                 timeout=20, interval=0.5, what="both jobs ready")
        assert proxy.calls() == dict.fromkeys(archived, 1)
        listed = fabtier_cli("retrieve", "--list", "--config", str(config)).stdout
        assert first["id"] in listed and second["id"] in listed

        # Unsealed readings of now, beside the restored and cold hours
        now = int(time.time() * 1000)
        mosquitto_pub(broker, "fab/etch-03", json.dumps({"ts": [now - 1000, now], "sensor": ["p", "p"],
                                                         "v": [1.5, 2.5]}))
        wait_for(lambda: _sql(config, COUNT)[0]["n"] == 362, what="the unsealed readings")
        result = fabtier_cli("sql", COUNT, "--config", str(config), "--format", "json")
        # Restored copies are read: the answer is whole and says nothing is left out.
        assert json.loads(result.stdout) == [{"n": 362, "d": 362}] and "leaves out" not in result.stderr
        rows = _sql(config, ROWS + f" WHERE ts < to_timestamp({(T0 + 3 * HOUR) / 1000})")
        assert {(r["machine"], r["sensor"], r["t"]): r["value"] for r in rows} == expected and len(rows) == 360
        warm = _sql(config, "SELECT sum(n) AS n FROM readings_1m")
        assert warm == [{"n": 360}]

        # The notices are retained: a subscriber that comes now gets each job's last state.
        out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t",
                              "fab-jobs/retrievals/#", "-C", "2", "-W", "10", "-v"],
                             capture_output=True, text=True, timeout=20).stdout
        notices = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in out.splitlines()}
        assert {t: n["state"] for t, n in notices.items()} == {
            f"fab-jobs/retrievals/{first['id']}": "ready", f"fab-jobs/retrievals/{second['id']}": "ready"}

        proxy.expire(bucket=bucket)  # S3 removes the restored copies after their days
        assert _sql(config, COUNT) == [{"n": 122, "d": 122}]
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out[-3000:]
