"""`fabtier demo` as the README runs it: broker, simulator and pipeline, then a clean stop."""

from __future__ import annotations

import re

import pytest

from fabtier.broker import find_mosquitto
from tests.conftest import fabtier_cli


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
def test_demo_runs_stops_cleanly_and_keeps_every_reading(tmp_path):
    data_dir = tmp_path / "demo"
    result = fabtier_cli("demo", "--seconds", "4", "--data-dir", str(data_dir), "--port", "0",
                         "--machines", "3", "--sensors", "4", "--rate-hz", "25")
    assert "Traceback" not in result.stderr
    summary = re.search(r"published (\d+) readings, stored (\d+), quarantined (\d+), sealed (\d+)", result.stdout)
    assert summary, result.stdout
    published, stored, quarantined, sealed = map(int, summary.groups())
    assert published > 0 and stored == published == sealed and quarantined == 0
    count = fabtier_cli("sql", "SELECT count(*) AS n, count(DISTINCT (machine, sensor, ts)) AS d FROM readings",
                        "--config", str(data_dir / "fabtier.toml"), "--format", "csv").stdout.split()
    assert count == ["n,d", f"{published},{published}"]
    assert list((data_dir / "lake" / "raw").rglob("*.parquet"))
    assert not [p for p in (data_dir / "wal").glob("*.wal") if p.stat().st_size > 8]
