"""Retrieval on the local store, end to end: a pipeline with a ManualClock (which also times
the store's restores), archived hours next to cold ones, warm minutes and unsealed readings;
jobs made through the HTTP API's functions, followed by the scheduler's `retrieve` job
across a restart, announced on MQTT; and `fabtier retrieve` on the data directory itself."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics.session import run_sql
from core.clock import ManualClock
from core.records import DEEP_ARCHIVE, GLACIER
from fabtier import retrieval_api
from fabtier.pipeline import Pipeline
from lifecycle.scheduler import runner_for
from tests.conftest import fabtier_cli, make_settings
from tiers.parquetformat import normalise_readings

HOUR = 3_600_000
T0 = 1_699_956_000_000  # 2023-11-14T10:00Z
NOW = T0 + 3 * HOUR + 10 * 60_000
MACHINES = ("etch-01", "etch-02")


def _batch(machine: str, start: int, n: int, step: int = 60_000) -> tuple[str, bytes, int, int]:
    ts = [start + i * step for i in range(n)]
    body = {"ts": ts + ts, "sensor": ["ch1/temp"] * n + ["rf/power"] * n,
            "v": [20.0 + i / 4 for i in range(n)] + [round(100 + i * 0.1, 1) for i in range(n)]}
    return (f"fab/{machine}", json.dumps(body).encode(), 0, 0)


def _settings(tmp_path, broker):
    return make_settings(tmp_path, broker, cold={"seal_in_child": False},
                         ingest={"max_late": "1d"},
                         retrieval={"poll_every": "1s", "keep_restored": "600s", "local_glacier_standard": "30s",
                                    "local_deep_archive_standard": "90s", "local_glacier_bulk": "60s",
                                    "local_deep_archive_bulk": "120s"})


def _open(settings, clock) -> Pipeline:
    pipeline = Pipeline(settings, clock=clock)
    # The pipeline builds its store from the settings; restores here follow the test's clock.
    pipeline.lake.store.clock = clock
    pipeline.open(warm=False)
    return pipeline


def _sql(pipeline, sql: str) -> list[dict]:
    return run_sql(pipeline.sql_sources(), sql).to_pylist()


COUNT = "SELECT count(*) AS n, count(DISTINCT (machine, sensor, ts)) AS d FROM readings"


def test_local_retrieval_through_every_tier_and_a_restart(tmp_path, broker):
    from tests.conftest import MosquittoSub

    settings = _settings(tmp_path, broker)
    clock = ManualClock(NOW)
    pipeline = _open(settings, clock)
    try:
        # Three hours of two machines, sealed and rolled up (warm), 30 readings a sensor an hour.
        pipeline.process([_batch(m, T0 + h * HOUR, 30) for m in MACHINES for h in range(3)])
        pipeline.wal.commit()
        pipeline.seal()
        assert runner_for(pipeline).run("rollup")["minutes"] == 3 * 2 * 2 * 30
        # Hours 0 and 1 archived (as the lifecycle does on a local store), hour 2 stays cold.
        store = pipeline.lake.store
        for f in pipeline.lake.lake_files("raw"):
            hour = (int(f.hour or 0) - 10) % 24
            if hour < 2:
                store.set_storage_class(f.key, GLACIER if hour == 0 else DEEP_ARCHIVE)
        # Unsealed readings of the last minutes: the hot tier.
        pipeline.process([_batch(m, NOW - 5 * 60_000, 5, 1000) for m in MACHINES])
        pipeline.wal.commit()
        assert _sql(pipeline, COUNT) == [{"n": 2 * 2 * 30 + 2 * 2 * 5, "d": 2 * 2 * 30 + 2 * 2 * 5}]

        jobs_sub = MosquittoSub(broker, "fab-jobs/retrievals/#")
        # POST /retrievals: the hours 0-1, at standard speed
        answer = retrieval_api.post_retrievals(pipeline, json.dumps(
            {"from": T0, "to": T0 + 2 * HOUR, "machine": "etch-01"}).encode())
        assert answer.status == 202
        job = answer.body
        assert isinstance(job, dict) and answer.headers == {"Location": f"/retrievals/{job['id']}"}
        assert job["state"] == "restoring" and job["speed"] == "standard" and job["eta_s"] == 90
        assert {o["storage_class"] for o in job["objects"]} == {GLACIER, DEEP_ARCHIVE}
        assert "partitioned by hour" in job["pruning"]  # etch-01 asked for, every object restored
        # An overlapping job at bulk speed: shares the DEEP_ARCHIVE hour's restores
        other = retrieval_api.post_retrievals(pipeline, json.dumps(
            {"from": T0 + HOUR + 1, "to": T0 + 3 * HOUR, "speed": "bulk"}).encode()).body
        assert isinstance(other, dict) and other["cost_usd"] == 0
        assert all(not o["requested"] for o in other["objects"])
        assert retrieval_api.get_retrieval(pipeline, f"/retrievals/{job['id']}").body == job
        assert [j["id"] for j in retrieval_api.list_retrievals(pipeline).body] == [job["id"], other["id"]]
        assert retrieval_api.get_retrieval(pipeline, "/retrievals/20990101T000000Z-000000").status == 404
        bad = retrieval_api.post_retrievals(pipeline, b'{"from": 1, "to": 2}')
        assert bad.status == 400 and bad.body["parameter"] == "from"
        bad = retrieval_api.post_retrievals(pipeline, b'{"from": 1700000000000, "to": 1700000000001, "x": 1}')
        assert bad.status == 400 and bad.body["parameter"] == "x"

        clock.advance(30)  # GLACIER ready
        runner_for(pipeline).run("retrieve")
        assert _sql(pipeline, COUNT)[0]["n"] == 4 * 30 + 4 * 30 + 4 * 5
    finally:
        pipeline.close_offline()

    clock.advance(60)  # DEEP_ARCHIVE ready while the pipeline is down
    pipeline = _open(settings, clock)
    try:
        report = runner_for(pipeline).run("retrieve")
        assert report["changed"] == 2 and report["following"] == [] and report["notices"] >= 2
        states = {j["id"]: j["state"] for j in retrieval_api.list_retrievals(pipeline).body}
        assert states == {job["id"]: "ready", other["id"]: "ready"}
        # Hot (unsealed, in the log again after the restart), cold and restored: each reading once.
        everything = 3 * 4 * 30 + 4 * 5
        assert _sql(pipeline, COUNT) == [{"n": everything, "d": everything}]
        rows = _sql(pipeline, "SELECT machine, sensor, epoch_ms(ts) AS t, value FROM readings "
                              f"WHERE ts < to_timestamp({(T0 + 3 * HOUR) / 1000}) ORDER BY ALL")
        assert [(r["t"] - T0) // HOUR for r in rows].count(0) == 4 * 30
        assert rows[0] == {"machine": "etch-01", "sensor": "ch1/temp", "t": T0, "value": 20.0}
        # The warm minutes of the same hours count the same readings.
        warm = _sql(pipeline, "SELECT sum(n) AS n FROM readings_1m WHERE minute < to_timestamp("
                              f"{(T0 + 3 * HOUR) / 1000})")
        assert warm == [{"n": len(rows)}]
        from tests.conftest import wait_for
        wait_for(lambda: {(t.rsplit("/", 1)[1], m["state"]) for t, m in jobs_sub.messages}
                 >= {(job["id"], "ready"), (other["id"], "ready")}, timeout=10, what="the MQTT notices")
        assert {m["state"] for t, m in jobs_sub.messages if t.endswith(job["id"])} == {"restoring", "ready"}

        clock.advance(600)  # the restored copies expire: readings leaves them out again
        assert _sql(pipeline, COUNT)[0]["n"] == 4 * 30 + 4 * 5
    finally:
        jobs_sub.stop()
        pipeline.close_offline()


def test_fabtier_retrieve_on_the_data_directory(tmp_path):
    """No instance runs: the command plans, stores and asks for the restores itself, and
    --status looks at the store again (restores of a second here, on the real clock)."""
    config = tmp_path / "fabtier.toml"
    settings = make_settings(tmp_path, None, cold={"seal_in_child": False}, ingest={"max_late": "1d"})
    config.write_text(f'data_dir = "{settings.data_dir}"\n[api]\nport = {settings.api.port}\n'
                      '[retrieval]\nlocal_glacier_standard = "1s"\nlocal_glacier_expedited = "1s"\n', encoding="utf-8")
    pipeline = Pipeline(settings, clock=ManualClock(NOW))
    pipeline.open(warm=False)
    try:
        pipeline.process([_batch("etch-01", T0, 30)])
        pipeline.wal.commit()
        pipeline.seal()
        for f in pipeline.lake.lake_files("raw"):
            pipeline.lake.store.set_storage_class(f.key, GLACIER)
    finally:
        pipeline.close_offline()

    made = json.loads(fabtier_cli("retrieve", "--from", "2023-11-14T10:00:00Z", "--to", "2023-11-14T11:00:00+00:00",
                                  "--speed", "expedited", "--json", "--config", str(config)).stdout)
    assert made["state"] == "restoring" and made["objects"] and made["eta_s"] == 1
    assert set(made) >= {"id", "state", "objects", "bytes", "eta_s", "cost_usd"}
    time.sleep(1.1)
    status = json.loads(fabtier_cli("retrieve", "--status", made["id"], "--json", "--config", str(config)).stdout)
    assert status["state"] == "ready"
    listed = fabtier_cli("retrieve", "--list", "--config", str(config)).stdout
    assert made["id"] in listed and "ready" in listed
    rows = json.loads(fabtier_cli("sql", COUNT, "--config", str(config), "--format", "json").stdout)
    assert rows == [{"n": 60, "d": 60}]

    # The ready job's range as a Parquet dataset in the lake's layout: every reading once, the
    # values as published; exported again, the same files are replaced; audited as `export`.
    target = tmp_path / "training-set"
    for _ in range(2):
        done = json.loads(fabtier_cli("retrieve", "--status", made["id"], "--export", str(target), "--json",
                                      "--config", str(config)).stdout)
        assert done["export"]["rows"] == 60 and done["export"]["files"] >= 1
    files = sorted(str(f.relative_to(target)) for f in target.rglob("*.parquet"))
    assert files and all(f.startswith("raw/date=2023-11-14/hour=10/export-") for f in files)
    # One file per value encoding, as in the lake (DECIMAL(18, s) or DOUBLE): read each as is.
    exported = pa.concat_tables(normalise_readings(pq.read_table(target / f)).select(["machine", "sensor", "ts", "value"])
                                for f in files)
    published = {("etch-01", s, T0 + i * 60_000): v for s, vs in
                 (("ch1/temp", [20.0 + i / 4 for i in range(30)]), ("rf/power", [round(100 + i * 0.1, 1)
                                                                                 for i in range(30)]))
                 for i, v in enumerate(vs)}
    got = {(m, s, int(ts.timestamp() * 1000)): float(v) for m, s, ts, v in zip(
        *(exported.column(c).to_pylist() for c in ("machine", "sensor", "ts", "value")), strict=True)}
    assert got == published and exported.num_rows == 60
    audit = json.loads(fabtier_cli("sql", "SELECT count(*) AS n FROM tier_moves WHERE job = 'export'",
                                   "--config", str(config), "--format", "json").stdout)
    assert audit == [{"n": 2 * len(files)}]


@pytest.mark.parametrize(("args", "says"), [
    (["--list", "--export", "/tmp/x"], "--export goes with --status ID"),
    (["--from", "yesterday", "--to", "2023-11-14T11:00:00Z"], "--from 'yesterday' is not an ISO-8601 time"),
    (["--from", "2023-11-14T10:00:00", "--to", "2023-11-14T11:00:00Z"], "--from '2023-11-14T10:00:00' has no UTC offset"),
    (["--from", "2023-11-14T11:00:00Z", "--to", "2023-11-14T10:00:00Z"], "the range is empty"),
    (["--from", "2023-11-14T10:00:00Z"], "give both --from and --to"),
    (["--from", "2023-11-14T10:00:00Z", "--to", "2023-11-14T11:00:00Z", "--speed", "fast"],
     "--speed 'fast' is not a retrieval speed; use expedited, standard or bulk"),
    (["--status", "20990101T000000Z-000000"], "no retrieval job '20990101T000000Z-000000'"),
    (["--status", "x", "--list"], "give only one of"),
    ([], "give --from and --to"),
])
def test_user_mistakes_are_one_line(tmp_path, args, says):
    config = tmp_path / "fabtier.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[api]\nport = 1\n', encoding="utf-8")
    result = fabtier_cli("retrieve", *args, "--config", str(config), check=False)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_the_api_routes(tmp_path):
    """POST /retrievals, GET /retrievals/{id} and /retrievals over HTTP, in a running instance."""
    from fabtier.reader import _exchange
    from fabtier.runner import Instance

    settings = make_settings(tmp_path, None)
    instance = Instance(settings)
    instance.pipeline.open(warm=False)
    from fabtier.api import ApiServer
    api = ApiServer(instance.pipeline, host="127.0.0.1", port=settings.api.port)
    api.start()
    try:
        status, headers, body = _exchange(settings, "POST", "/retrievals", json.dumps(
            {"from": T0, "to": T0 + HOUR}).encode())
        job = json.loads(body)
        assert status == 202 and headers["Location"] == f"/retrievals/{job['id']}" and job["state"] == "ready"
        status, _, body = _exchange(settings, "GET", f"/retrievals/{job['id']}")
        assert status == 200 and json.loads(body)["id"] == job["id"]
        status, _, body = _exchange(settings, "GET", "/retrievals")
        assert status == 200 and [j["id"] for j in json.loads(body)] == [job["id"]]
        assert _exchange(settings, "GET", "/retrievals/nope")[0] == 404
        status, headers, _ = _exchange(settings, "DELETE", "/retrievals")
        assert status == 405 and headers["Allow"] == "GET, POST"
        status, _, body = _exchange(settings, "POST", "/retrievals", b'{"from": 1}')
        assert status == 400 and json.loads(body)["parameter"] == "to"
        paths = json.loads(_exchange(settings, "GET", "/openapi.json")[2])["paths"]
        assert {"/retrievals", "/retrievals/{id}"} <= set(paths)
    finally:
        api.stop()
        instance.pipeline.close_offline()
