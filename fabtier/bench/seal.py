"""`fabtier bench seal`: what sealing costs a reading, against pyarrow writing the same rows.

The simulator's stream (`--machines` x `--sensors` at `--rate-hz`, `--seconds` of data,
batches of 500) goes through a pipeline in this process: `Ingestor.process` decodes, logs and
keeps it (ring, unsealed buffer) as in a live run, without a broker, and the log rotates at its
segment size, so the hour holds several segments whose spans touch at their boundaries, as a
live run's do. Then one seal writes them all into a local lake, as the seal job does (in a
child process unless `[cold] seal_in_child` is off), and its CPU is timed: this process's and
its children's. Baseline in the same run: the lake's readings, read back, written by pyarrow as
one zstd Parquet file (`pq.write_table`), timed the same way. The seal does more (it sorts,
chooses each sensor's value encoding, reads each file back to verify it, writes the audit
trail): the ratio says what that costs.
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq

from fabtier.bench.inprocess import feed, open_pipeline, simulated_stream


@dataclass(frozen=True)
class SealBench:
    machines: int = 40
    sensors: int = 100
    rate_hz: float = 250.0
    seconds: float = 10.0
    seed: int = 1


def _cpu_seconds() -> float:
    """CPU of this process and of its children that were waited for (the seal's), to the
    microsecond (`fabtier.bench.harness.process_cpu_seconds` reads /proc in 10 ms ticks: a
    short phase, such as a small baseline write, reads as nothing)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(bench: SealBench, workdir: Path | None = None) -> dict:
    own_dir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fabtier-bench-seal-"))
    try:
        pipeline = open_pipeline(workdir / "data")
        try:
            feed(pipeline, simulated_stream(bench.machines, bench.sensors, bench.rate_hz, bench.seconds, bench.seed))
            readings = pipeline.metrics.readings_stored
            segments = len(pipeline.unsealed.segments())
            began = _cpu_seconds()
            report = pipeline.seal()  # the active segment too: a seal rotates the log first
            seal_cpu = _cpu_seconds() - began
            table = pipeline.lake.read_raw()
            began = _cpu_seconds()
            pq.write_table(table, workdir / "baseline.parquet", compression="zstd")
            baseline_cpu = _cpu_seconds() - began
            lake_bytes = sum(size for _, size in pipeline.lake.store.list("raw/"))
        finally:
            pipeline.stop(seal=False)
        return {"bench": "seal", **asdict(bench), "readings": readings, "segments": segments,
                "sealed_readings": table.num_rows, "sealed_segments": report.segments,
                "seal_cpu_s": round(seal_cpu, 3), "seal_ns_per_reading": round(seal_cpu / max(readings, 1) * 1e9),
                "baseline_cpu_s": round(baseline_cpu, 3),
                "baseline_ns_per_reading": round(baseline_cpu / max(readings, 1) * 1e9),
                "ratio_to_baseline": round(seal_cpu / baseline_cpu, 2) if baseline_cpu > 0 else None,
                "lake_bytes_per_reading": round(lake_bytes / max(table.num_rows, 1), 2),
                "baseline_bytes_per_reading": round((workdir / "baseline.parquet").stat().st_size
                                                    / max(table.num_rows, 1), 2)}
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def report(result: dict) -> str:
    return (f"seal: {result['readings']:,} readings ({result['machines']} machines x {result['sensors']} sensors x "
            f"{result['rate_hz']:g} Hz, {result['seconds']:g} s) in {result['segments']} log segment(s)\n"
            f"  fabtier seal         {result['seal_ns_per_reading']:>6,} ns a reading of CPU "
            f"({result['seal_cpu_s']:.2f} s), lake {result['lake_bytes_per_reading']:.2f} bytes a reading\n"
            f"  pyarrow write_table  {result['baseline_ns_per_reading']:>6,} ns a reading of CPU "
            f"({result['baseline_cpu_s']:.2f} s), {result['baseline_bytes_per_reading']:.2f} bytes a reading\n"
            f"  ratio {result['ratio_to_baseline']}; sealed {result['sealed_readings']:,} of "
            f"{result['readings']:,} in {result['sealed_segments']} segment(s)")


def main(bench: SealBench, as_json: bool) -> int:
    result = run(bench)
    print(report(result), flush=True)
    if as_json:
        print(json.dumps(result))
    return 0 if result["sealed_readings"] == result["readings"] else 1
