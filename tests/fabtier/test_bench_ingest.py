"""`fabtier bench ingest` as a user runs it, on a small stream: one process, and two on a
shared subscription; every published reading is counted once."""

import json
import shutil

import pytest

from fabtier.bench.ingestmatrix import statement_cpu_ms
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
    # Where the cores went while fabtier took the stream (a fraction of a second here: whole
    # clock ticks, so any one process may show 0).
    cores = result["cpu_cores"]
    assert set(cores) == {"fabtier", "broker", "bench", "machine", "other", "cores"}  # no SQL client
    assert cores["cores"] >= 1 and cores["machine"] > 0 and min(cores.values()) >= 0
    assert result["backpressure_commits"] >= 0 and result["segments_sealed"] >= 0


def test_two_processes_on_a_shared_subscription_split_the_stream_and_lose_nothing():
    result = _result(*SMALL, "--processes", "2")
    assert result["processes"] == 2 and len(result["messages_per_process"]) == 2
    assert all(n > 0 for n in result["messages_per_process"])  # the broker split it
    assert sum(result["messages_per_process"]) == result["messages"]
    assert result["stored"] == result["readings"] and result["lost"] == 0 and result["duplicates"] == 0


def test_processes_must_be_positive():
    out = fabtier_cli("bench", "ingest", "--processes", "0", check=False)
    assert out.returncode == 2 and "--processes must be 1 or more" in out.stderr and "Traceback" not in out.stderr


def test_cells_compared_in_rounds_of_alternating_order_lose_nothing():
    out = fabtier_cli("bench", "ingest", "--scales", "2x4x50,3x4x50", "--queries-per-s", "0,4", "--rounds", "2",
                      "--seconds", "1", "--batch", "20", "--json", timeout=600).stdout
    lines = out.strip().splitlines()
    ran = [line for line in lines if line.startswith("round ")]
    # Four cells a round; the second round runs them in the reverse order.
    assert [line.split(":")[1] for line in ran[:4]] == [line.split(":")[1] for line in ran[4:][::-1]]
    result = json.loads(lines[-1])
    cells = {(c["scale"], c["queries_per_s"]): c for c in result["cells"]}
    assert set(cells) == {("2x4x50", 0.0), ("2x4x50", 4.0), ("3x4x50", 0.0), ("3x4x50", 4.0)}
    assert all(c["runs"] == 2 and c["lost"] == 0 and c["duplicates"] == 0 for c in cells.values())
    assert cells[("3x4x50", 4.0)]["sql_ms_p50"] > 0 and "sql_ms_p50" not in cells[("3x4x50", 0.0)]
    # Compared within each round: against the first scale at the same rate, and without queries.
    assert len(cells[("3x4x50", 0.0)]["vs_first_scale_whole_paired"]) == 2
    assert len(cells[("2x4x50", 4.0)]["vs_fewest_queries_whole_paired"]) == 2
    assert "vs_first_scale_whole" not in cells[("2x4x50", 0.0)]
    # What a statement cost the instance: paired with the run without queries in each round.
    assert len(cells[("3x4x50", 4.0)]["statement_cpu_ms_paired"]) == 2
    assert "statement_cpu_ms" not in cells[("3x4x50", 0.0)]
    assert "sql_client" in cells[("3x4x50", 4.0)]["cpu_cores"] and "sql_client" not in cells[("3x4x50", 0.0)]["cpu_cores"]
    assert "a statement:" in out and "the bench's publisher and probes" in out and "held back for a seal" in out
    assert all(len(c["each_backpressure_commits"]) == 2 for c in cells.values())


def test_a_statements_cost_is_the_cpu_beyond_the_quiet_run_over_the_statements():
    quiet = {"fabtier_cpu_seconds": 10.0}
    assert statement_cpu_ms({"fabtier_cpu_seconds": 13.0, "sql_queries": 60}, quiet) == 50.0
    assert statement_cpu_ms({"fabtier_cpu_seconds": 9.7, "sql_queries": 30}, quiet) == -10.0  # noise shows
    assert statement_cpu_ms({"fabtier_cpu_seconds": 13.0, "sql_queries": 0}, quiet) is None


@pytest.mark.parametrize("args, message", [
    (["--scales", "40x100"], "'40x100' is not MACHINESxSENSORSxHZ"),
    (["--scales", "0x1x5"], "'0x1x5' is not MACHINESxSENSORSxHZ"),
    (["--queries-per-s", "0,five"], "--queries-per-s: '0,five' is not a number"),
    (["--queries-per-s", "-1"], "--queries-per-s must be 0 (no queries) or more"),
    (["--rounds", "0"], "--rounds must be 1 or more"),
    (["--rounds", "2", "--live"], "leave out --live and --processes"),
])
def test_a_bad_comparison_is_refused_with_what_to_write(args, message):
    out = fabtier_cli("bench", "ingest", *args, check=False)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
