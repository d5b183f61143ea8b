"""`fabtier bench dashboard` as a user runs it: figures printed, one JSON object last, every
probe alert reached the stream. Times are printed, never asserted."""

import json

import pytest

from fabtier.broker import find_mosquitto
from tests.conftest import fabtier_cli


def test_bench_dashboard_prints_its_figures_and_a_json_line():
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    result = fabtier_cli("bench", "dashboard", "--seconds", "3", "--machines", "2", "--sensors", "10",
                         "--rate-hz", "10", "--clients", "2", "--json", timeout=180)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "alert publish to stream" in result.stdout
    assert report["bench"] == "dashboard" and report["clients"] == 2
    for phase in ("without_dashboard", "with_dashboard"):
        assert report[phase]["ingest_rate"] > 0 and report[phase]["series_requests"] > 0
    assert report["with_dashboard"]["alerts_sent"] >= 2 and report["with_dashboard"]["alerts_missed"] == 0
    assert report["with_dashboard"]["updates_per_client_per_s"] > 0
