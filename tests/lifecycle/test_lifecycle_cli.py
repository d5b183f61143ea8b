"""`fabtier lifecycle run [--now ISO]` against the stores directly (no instance running)."""

from __future__ import annotations

import datetime as dt
import json

from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from tests.conftest import fabtier_cli, make_settings, write_config

MINUTE = 60_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sql(config, statement):
    return json.loads(fabtier_cli("sql", statement, "--config", str(config), "--format", "json").stdout)


def test_now_measures_ages_as_of_that_time(tmp_path):
    settings = make_settings(tmp_path, None, warm={"retention": "1d"})
    config = write_config(settings, tmp_path / "fabtier.toml")
    config.write_text(config.read_text() + '[warm]\nretention = "1d"\n')
    pipeline = Pipeline(settings, clock=ManualClock(T0 + 5 * MINUTE))
    pipeline.open()
    payload = {"ts": [T0 + i * 10_000 for i in range(12)], "sensor": ["p"] * 12, "v": [float(i) for i in range(12)]}
    pipeline.process([("fab/cvd-02", json.dumps(payload).encode(), 0, 0)])
    pipeline.close_offline()  # left in the log, as after a crash

    # As of two hours later nothing is a day old: sealed and rolled up, nothing aged out.
    out = fabtier_cli("lifecycle", "run", "--config", str(config), "--now", _iso(T0 + 2 * 3_600_000)).stdout
    reports = {r["job"]: r for r in map(json.loads, out.splitlines())}
    assert reports["rollup"]["minutes"] == 2 and reports["age_out"]["minutes"] == 0
    expected = [{"m": T0, "n": 6, "first": 0.0, "last": 5.0}, {"m": T0 + MINUTE, "n": 6, "first": 6.0, "last": 11.0}]
    statement = 'SELECT epoch_ms(minute) AS m, n, "first", "last" FROM readings_1m ORDER BY m'
    assert _sql(config, statement) == expected

    # As of two days later both minutes move to agg_1m; readings_1m gives the same answer.
    out = fabtier_cli("lifecycle", "run", "--config", str(config), "--now", _iso(T0 + 2 * 86_400_000)).stdout
    assert {r["job"]: r for r in map(json.loads, out.splitlines())}["age_out"]["minutes"] == 2
    assert _sql(config, statement) == expected
    assert _sql(config, "SELECT job, what, rows FROM tier_moves WHERE job = 'age_out'") == [
        {"job": "age_out", "what": "agg_1m", "rows": 2}]
    day = _iso(T0)[:10]
    assert (settings.data_dir / "lake" / "agg_1m" / f"date={day}" / "w0.parquet").exists()
    assert _sql(config, "SELECT sum(n) AS n FROM readings_1h") == [{"n": 12}]


def test_a_bad_now_is_refused_with_the_fix(tmp_path):
    config = write_config(make_settings(tmp_path, None), tmp_path / "fabtier.toml")
    for bad in ("yesterday", "2026-01-01T00:00:00"):
        result = fabtier_cli("lifecycle", "run", "--config", str(config), "--now", bad, check=False)
        assert result.returncode == 2 and "--now" in result.stderr and "Traceback" not in result.stderr
