"""`fabtier bench soak` as a user runs it, for a few seconds at a low rate: the table, one JSON
object last, and every reading fed stored once. Memory and times are printed, never asserted."""

import json
import shutil

import pytest

from tests.conftest import fabtier_cli

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="needs mosquitto_pub")


def test_bench_soak_samples_the_instance_and_loses_nothing():
    out = fabtier_cli("bench", "soak", "--minutes", "0.2", "--rate", "2000", "--feeders", "2", "--sensors", "10",
                      "--json", timeout=300).stdout
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])
    assert "RSS MiB" in lines[0] and "lost 0, duplicates 0" in out
    assert result["bench"] == "soak" and result["feeders"] == 2
    assert result["hot_budget"] == result["max_unsealed"] == 512 << 20
    assert result["readings"] > 0 and result["messages"] * 500 == result["readings"]
    assert result["stored"] == result["distinct"] == result["readings"]
    assert result["lost"] == 0 and result["duplicates"] == 0
    assert len(result["samples"]) >= 2
    for sample in result["samples"]:
        assert {"t", "rss_mib", "children_rss_mib", "children_private_mib", "open_files", "threads",
                "readings_per_s", "unsealed_rows"} <= set(sample)
        assert sample["rss_mib"] > 0 and sample["open_files"] > 0 and sample["threads"] > 0
    assert {"peak_rss_mib", "bound_mib", "within_bound", "open_files_start", "open_files_end",
            "log"} <= set(result)
