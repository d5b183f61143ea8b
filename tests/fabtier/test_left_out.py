"""A query is never silently incomplete (issue 16): archived raw objects an answer cannot read
are named on stderr by the CLI and in response headers by the API; engineers may ask for an
error instead."""

import json
import urllib.error
import urllib.request

from analytics.leftout import ArchivedObject, LeftOut, left_out
from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from fabtier.runner import Instance
from tests.conftest import fabtier_cli, make_settings, write_config
from tiers.store import LocalStore

HOUR = 3_600_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR  # an hour's start, 2025-11-24


def _lake_with_one_archived_hour(settings) -> str:
    """Three readings in hour 0 and two in hour 1, sealed; hour 0's raw file then archived."""
    pipeline = Pipeline(settings, clock=ManualClock(T0 + 2 * HOUR))
    pipeline.open(warm=False)
    body = {"ts": [T0 + 1, T0 + 2, T0 + 3, T0 + HOUR + 1, T0 + HOUR + 2], "sensor": ["a"] * 5, "v": [1.0] * 5}
    pipeline.process([("fab/etch-01", json.dumps(body).encode(), 0, 0)])
    assert pipeline.wal is not None
    pipeline.wal.commit()
    pipeline.seal()
    pipeline.close_offline()
    store = LocalStore(settings.data_dir / "lake")
    (key,) = [k for k, _ in store.list("raw/date=2025-11-24/hour=16/")]
    store.set_storage_class(key, "GLACIER")
    return key


def test_the_cli_names_what_an_offline_answer_leaves_out(tmp_path):
    settings = make_settings(tmp_path, None)
    _lake_with_one_archived_hour(settings)
    config = write_config(settings, tmp_path / "fabtier.toml")
    result = fabtier_cli("sql", "--config", str(config), "SELECT count(*) AS n FROM readings", "--format", "json")
    assert json.loads(result.stdout) == [{"n": 2}]
    assert "leaves out 1 archived raw object(s)" in result.stderr and "1 GLACIER" in result.stderr
    assert "fabtier retrieve --from 2025-11-24T16:00:00Z --to 2025-11-24T17:00:00Z" in result.stderr
    refused = fabtier_cli("sql", "--config", str(config), "SELECT count(*) FROM readings", "--archived", "error",
                          check=False)
    assert refused.returncode == 1 and refused.stdout == "" and "leaves out 1 archived" in refused.stderr
    quiet = fabtier_cli("sql", "--config", str(config), "SELECT count(*) AS n FROM quarantine")
    assert "leaves out" not in quiet.stderr


def _post(url: str, sql: str) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=sql.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_api_says_it_in_headers_and_keeps_the_body_a_plain_array(broker, tmp_path):
    settings = make_settings(tmp_path, broker)
    _lake_with_one_archived_hour(settings)
    instance = Instance(settings).start()
    try:
        status, headers, body = _post(f"{instance.api_url}/sql?format=json", "SELECT count(*) AS n FROM readings")
        assert status == 200 and json.loads(body) == [{"n": 2}]
        notice = LeftOut.from_headers(headers)
        assert notice is not None and (notice.objects, notice.from_ms, notice.to_ms) == (1, T0, T0 + HOUR)
        assert headers["X-Fabtier-Retrieve"].startswith("fabtier retrieve --from 2025-11-24T16:00:00Z")
        status, headers, body = _post(f"{instance.api_url}/sql?format=json&archived=error",
                                      "SELECT count(*) FROM readings")
        assert status == 409 and "leaves out 1 archived" in json.loads(body)["error"]
        status, headers, _ = _post(f"{instance.api_url}/sql?format=json", "SELECT count(*) FROM lot_runs")
        assert status == 200 and "X-Fabtier-Left-Out-Objects" not in headers
        # The CLI through the running instance prints the same notice.
        config = write_config(settings, tmp_path / "fabtier.toml")
        result = fabtier_cli("sql", "--config", str(config), "SELECT count(*) AS n FROM readings", "--format", "json")
        assert json.loads(result.stdout) == [{"n": 2}] and "leaves out 1 archived raw object(s)" in result.stderr
        refused = fabtier_cli("sql", "--config", str(config), "SELECT count(*) FROM readings", "--archived", "error",
                              check=False)
        assert refused.returncode == 1 and refused.stdout == "" and "leaves out 1 archived" in refused.stderr
    finally:
        instance.stop()


def test_left_out_is_none_for_statements_that_read_no_raw_readings():
    archived = [ArchivedObject("raw/date=2025-11-24/hour=16/w0-000000000001.f64.parquet", 100, "DEEP_ARCHIVE",
                               T0, T0 + HOUR)]
    assert left_out(archived, "SELECT * FROM readings_1m") is None
    assert left_out(archived, "SELECT * FROM alerts a JOIN lot_runs l USING (machine)") is None
    assert left_out([], "SELECT * FROM readings") is None
    assert left_out(archived, "EXPLAIN SELECT max(ts) FROM readings") is not None
    found = left_out(archived, "WITH r AS (SELECT * FROM Readings) SELECT count(*) FROM r")
    assert found is not None and found.classes == {"DEEP_ARCHIVE": 1}
    assert LeftOut.from_headers(found.headers()) == found
    assert LeftOut.from_headers({}) is None


def test_the_notice_names_the_retrieval_job_that_is_bringing_them_back(tmp_path):
    """Once someone asked for them, the notice says so (and which job), instead of only
    suggesting a retrieval that already runs."""
    settings = make_settings(tmp_path, None)
    _lake_with_one_archived_hour(settings)
    config = write_config(settings, tmp_path / "fabtier.toml")
    before = fabtier_cli("sql", "--config", str(config), "SELECT count(*) AS n FROM readings")
    assert "being brought back" not in before.stderr
    made = json.loads(fabtier_cli("retrieve", "--from", "2025-11-24T16:00:00Z", "--to", "2025-11-24T17:00:00Z",
                                  "--json", "--config", str(config)).stdout)
    assert made["state"] != "ready"  # a local GLACIER standard restore takes hours by default
    after = fabtier_cli("sql", "--config", str(config), "SELECT count(*) AS n FROM readings")
    assert "leaves out 1 archived" in after.stderr
    assert f"1 of them are being brought back by retrieval job(s) {made['id']}" in after.stderr
    assert f"fabtier retrieve --status {made['id']}" in after.stderr


def test_an_archived_file_whose_time_range_cannot_match_is_not_left_out(tmp_path):
    """The catalog keeps an archived file's time range from before it was archived: a
    statement whose bounds (a literal to the millisecond is exact) still reach into the file's
    hour but not its readings loses nothing, and says nothing."""
    settings = make_settings(tmp_path, None)
    _lake_with_one_archived_hour(settings)  # hour 16's file holds 16:00:00.001 .. 16:00:00.003
    config = write_config(settings, tmp_path / "fabtier.toml")
    beyond = fabtier_cli("sql", "--config", str(config), "SELECT count(*) AS n FROM readings "
                         "WHERE ts >= TIMESTAMP '2025-11-24 16:00:00.002'", "--format", "json")
    assert json.loads(beyond.stdout) == [{"n": 2}]  # hour 17's, readable
    assert "leaves out 1 archived" in beyond.stderr  # from 16:00:00.002 on: the file may hold one
    past = fabtier_cli("sql", "--config", str(config), "SELECT count(*) AS n FROM readings "
                       "WHERE ts >= TIMESTAMP '2025-11-24 16:00:00.004'", "--format", "json")
    assert json.loads(past.stdout) == [{"n": 2}] and "leaves out" not in past.stderr
