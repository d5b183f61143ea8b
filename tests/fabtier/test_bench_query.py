"""`fabtier bench query` as a user runs it, on tiny lakes: a table, then one JSON line with
the same answers through fabtier and through the floor."""

import json

from tests.conftest import fabtier_cli


def test_bench_query_runs_on_a_tiny_lake_and_prints_its_json_line():
    out = fabtier_cli("bench", "query", "--days", "0.25,0.5", "--machines", "1", "--sensors", "2",
                      "--rate-hz", "0.02", "--repeat", "1", "--json", timeout=300).stdout
    lines = out.strip().splitlines()
    assert any(line.lstrip().startswith("0.25d") and "one_hour_one_machine" in line for line in lines[:-1])
    result = json.loads(lines[-1])
    assert result["bench"] == "query" and [lk["days"] for lk in result["lakes"]] == [0.25, 0.5]
    for lake in result["lakes"]:
        assert lake["files"] > 0
        for question in lake["queries"].values():
            assert question["same_answer"] and question["rows"] > 0
            assert 0 < question["fabtier_files_opened"] <= lake["files"]


def test_bench_query_rejects_bad_days():
    out = fabtier_cli("bench", "query", "--days", "x", check=False)
    assert out.returncode == 2 and "--days" in out.stderr and "Traceback" not in out.stderr
