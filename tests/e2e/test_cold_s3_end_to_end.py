"""The whole path with the lake on S3 (moto's server): mosquitto -> fabtier -> Parquet on S3
-> SQL, then compaction and the lifecycle, with the instance running and stopped."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fabtier.runner import Instance
from tests.conftest import fabtier_cli, make_settings, mosquitto_pub, wait_for


def test_readings_reach_s3_once_and_sql_reads_them(broker, tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    settings = make_settings(tmp_path, broker, cold={"store": f"s3://{bucket}/fab", "endpoint_url": endpoint,
                                                     "compact_after": "0s"})
    config = tmp_path / "fabtier.toml"
    config.write_text(
        f'data_dir = "{settings.data_dir}"\n'
        f'[broker]\nurl = "{settings.broker.url}"\nclient_id = "{settings.broker.client_id}"\n'
        f'[api]\nport = {settings.api.port}\n'
        f'[cold]\nseal_every = "1h"\nstore = "s3://{bucket}/fab"\nendpoint_url = "{endpoint}"\ncompact_after = "0s"\n',
        encoding="utf-8")
    instance = Instance(settings).start()
    now = instance.pipeline.clock.now_ms()
    # Every batch in the current hour: an hour that already ended would be compacted by the
    # per-batch runs (compact_after 0s), leaving nothing for the run two hours on to merge
    # (this failed when the test ran in the first minute of an hour).
    first = max(now - 50_000, now - now % 3_600_000)
    expected = {}
    try:
        for batch in range(3):
            ts = [first + batch * 1000 + i for i in range(40)]
            values = [round(21.5 + 0.01 * i, 2) for i in range(20)] + [0.1 * i for i in range(20)]
            sensors = ["ch1/temp"] * 20 + ["rf/power"] * 20
            mosquitto_pub(broker, "fab/etch-01", json.dumps({"ts": ts, "sensor": sensors, "v": values}))
            expected.update({("etch-01", s, t): v for s, t, v in zip(sensors, ts, values, strict=True)})
            wait_for(lambda batch=batch: instance.pipeline.metrics.acked >= batch + 1, what="the batch to be durable")
            fabtier_cli("lifecycle", "run", "--config", str(config))  # seal (and compact) each batch
        # Two hours on, the hour has settled: the same run compacts its files.
        later = dt.datetime.fromtimestamp((now + 2 * 3_600_000) / 1000, dt.UTC).isoformat()
        reports = [json.loads(line) for line in fabtier_cli(
            "lifecycle", "run", "--config", str(config), "--now", later).stdout.splitlines()]
        assert {r["job"]: r for r in reports}["compact"]["files_merged"] >= 2
        rows = json.loads(fabtier_cli("sql", "SELECT machine, sensor, epoch_ms(ts) AS ms, value FROM readings",
                                      "--config", str(config), "--format", "json").stdout)
        assert len(rows) == len(expected)
        assert {(r["machine"], r["sensor"], r["ms"]): r["value"] for r in rows} == expected
        jobs = {m["job"] for m in json.loads(fabtier_cli(
            "sql", "SELECT DISTINCT job FROM tier_moves", "--config", str(config), "--format", "json").stdout)}
        assert {"seal", "compact"} <= jobs
    finally:
        instance.stop()

    fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http", region="us-east-1")
    files = [f for f in fs.get_file_info(pafs.FileSelector(f"{bucket}/fab/raw", recursive=True)) if f.is_file]
    assert files and all("/date=" in f.path and "/hour=" in f.path for f in files)
    stored = {}
    for f in files:
        table = pq.read_table(f.path, filesystem=fs, partitioning=None)
        assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
        for m, s, t, v in zip(table.column("machine").to_pylist(), table.column("sensor").to_pylist(),
                              table.column("ts").cast(pa.int64()).to_pylist(), table.column("value").to_pylist(),
                              strict=True):
            assert (m, s, t) not in stored
            stored[(m, s, t)] = float(v)
    assert stored == expected
    # Offline (no instance): the CLI reads S3 directly and gives the same answer.
    rows = json.loads(fabtier_cli("sql", "SELECT count(*) AS n, count(DISTINCT ts) AS t FROM readings",
                                  "--config", str(config), "--format", "json").stdout)
    assert rows == [{"n": len(expected), "t": len({t for _, _, t in expected})}]
