"""`fabtier bench alerts` as a user runs it: figures printed, one JSON object last, nothing missed.
Times are printed, never asserted."""

import json

import pytest

from fabtier.broker import find_mosquitto
from tests.conftest import fabtier_cli


def test_bench_alerts_prints_its_figures_and_a_json_line():
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    result = fabtier_cli("bench", "alerts", "--seconds", "1", "--machines", "2", "--sensors", "5",
                         "--rate-hz", "50", "--batch", "50", "--excursions-per-s", "10", "--json")
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert "publish -> raised alert at subscriber" in result.stdout
    assert report["bench"] == "alerts" and report["injected"] >= 5
    assert report["missed"] == 0 and report["repeated"] == 0
    assert report["raised"]["n"] == report["cleared"]["n"] == report["injected"]
    assert report["broker_hop_baseline"]["n"] == report["injected"]
    assert [row["batch"] for row in report["engine_ns_per_reading"]] == [100, 1000, 10_000]
    assert all(row[k] > 0 for row in report["engine_ns_per_reading"] for k in ("decode_ns", "fixed_ns", "recipe_ns"))
    assert report["simulator"]["readings"] > 0


def test_bench_alerts_refuses_bad_arguments():
    result = fabtier_cli("bench", "alerts", "--seconds", "0", check=False)
    assert result.returncode == 2 and "must be positive" in result.stderr and "Traceback" not in result.stderr
