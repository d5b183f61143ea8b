"""`fabtier bench ingest` as a user runs it, on a small stream: one process, and two on a
shared subscription; every published reading is counted once."""

import json
import shutil

import pytest

from tests.conftest import fabtier_cli

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="needs mosquitto_sub")
SMALL = ["--seconds", "2", "--machines", "3", "--sensors", "4", "--rate-hz", "50", "--batch", "20", "--json"]


def _result(*args: str) -> dict:
    out = fabtier_cli("bench", "ingest", *args, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_one_process_stores_every_reading_once():
    result = _result(*SMALL)
    assert result["readings"] > 1000 and result["stored"] == result["readings"]
    assert result["lost"] == 0 and result["duplicates"] == 0
    assert result["baseline_readings_per_s"] > 0 and result["fabtier_readings_per_s"] > 0


def test_two_processes_on_a_shared_subscription_split_the_stream_and_lose_nothing():
    result = _result(*SMALL, "--processes", "2")
    assert result["processes"] == 2 and len(result["messages_per_process"]) == 2
    assert all(n > 0 for n in result["messages_per_process"])  # the broker split it
    assert sum(result["messages_per_process"]) == result["messages"]
    assert result["stored"] == result["readings"] and result["lost"] == 0 and result["duplicates"] == 0


def test_processes_must_be_positive():
    out = fabtier_cli("bench", "ingest", "--processes", "0", check=False)
    assert out.returncode == 2 and "--processes must be 1 or more" in out.stderr and "Traceback" not in out.stderr
