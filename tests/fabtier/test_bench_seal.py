"""`fabtier bench seal`: every reading of the stream ends up in the lake, and the figures are
those of this run (CPU of the seal and of the baseline's write, the files' sizes)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from fabtier.bench import seal
from tests.conftest import fabtier_cli


def test_the_bench_seals_the_whole_stream_and_times_both_writers(tmp_path):
    result = seal.run(seal.SealBench(machines=2, sensors=3, rate_hz=50, seconds=2), workdir=tmp_path)
    assert result["readings"] == 2 * 3 * 50 * 2 and result["sealed_readings"] == result["readings"]
    assert result["sealed_segments"] >= 1 and result["seal_cpu_s"] > 0 and result["baseline_cpu_s"] > 0
    # the baseline file holds the same rows as the lake
    assert pq.read_metadata(tmp_path / "baseline.parquet").num_rows == result["readings"]
    assert result["lake_bytes_per_reading"] > 0 and "ratio" in seal.report(result)


def test_the_command_prints_its_figures_and_refuses_a_bad_load():
    done = fabtier_cli("bench", "seal", "--machines", "2", "--sensors", "2", "--rate-hz", "20", "--seconds", "1",
                       "--json")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "seal" and figures["sealed_readings"] == figures["readings"] == 80
    refused = fabtier_cli("bench", "seal", "--rate-hz", "0", check=False)
    assert refused.returncode != 0 and "--rate-hz in (0, 1000]" in refused.stderr and "Traceback" not in refused.stderr
