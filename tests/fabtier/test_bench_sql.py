"""`fabtier bench sql`: the statement's phases alone and beside a busy thread, over a lake of
several files and unsealed rows, with every answer checked against what was stored."""

from __future__ import annotations

import json

from fabtier.bench import sqlbusy
from tests.conftest import fabtier_cli


def test_the_bench_times_the_statement_alone_and_beside_a_busy_thread(tmp_path):
    result = sqlbusy.run(sqlbusy.SqlBench(machines=3, sensors=4, rate_hz=50, seconds=3, repeat=3), workdir=tmp_path)
    assert result["readings"] == 3 * 4 * 50 * 3  # every answer counted them all (run() checks each)
    assert result["lake_files"] >= 2 and 0 < result["unsealed_readings"] < result["readings"]
    assert result["statements"] == 3 and result["appending_ms"] is not None
    for way in ("alone_ms", "beside_busy_ms", "appending_ms"):
        phases = result[way]
        assert phases["total"] > 0 and phases["total"] >= phases["run"] and phases["sources"] >= phases["view"]
    assert "busy / alone" in sqlbusy.report(result)


def test_the_command_prints_its_figures_and_refuses_a_bad_load():
    done = fabtier_cli("bench", "sql", "--machines", "2", "--sensors", "2", "--rate-hz", "20", "--seconds", "2",
                       "--repeat", "2", "--json")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "sql" and figures["readings"] == 2 * 2 * 20 * 2 and figures["statements"] == 2
    refused = fabtier_cli("bench", "sql", "--repeat", "0", check=False)
    assert refused.returncode != 0 and "--repeat >= 1" in refused.stderr and "Traceback" not in refused.stderr
