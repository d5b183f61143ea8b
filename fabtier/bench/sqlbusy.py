"""`fabtier bench sql`: what `SELECT count(*) FROM readings` costs through the API's own path
(`Pipeline.sql_sources`, then `analytics.session.run_sql`), alone and beside a thread that keeps
the interpreter lock busy, as the ingest thread does in a running instance.

The simulator's stream (`--machines` x `--sensors` at `--rate-hz`, `--seconds` of data, batches of
500) goes through a pipeline in this process (`Pipeline.process`, as `bench seal`). The first two
thirds are sealed into a local lake in two seals (so the lake holds files of several segments),
the rest stays unsealed. Then the statement runs `--repeat` times in each of three ways, each
timed by phase (the `Server-Timing` phases of `POST /sql`):

- alone: the baseline of the same run, what the statement costs with the lock free;
- beside a busy thread: a Python thread that holds the lock but for Python's switch interval,
  which the instance sets to 0.5 ms, so every time the statement gives the lock up (a system
  call, a numpy or Arrow call that releases it, DuckDB checking for signals) it waits for it;
- the same, with new readings appended between statements (as many as the instance would
  take between two statements at `--rate` readings/s and 5 statements a second), so that each
  statement also extends the unsealed rows' view.

Medians are printed. The ratio busy / alone is what the interpreter lock costs the statement.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from analytics.session import run_sql
from fabtier.bench.inprocess import feed, open_pipeline, simulated_stream
from fabtier.pipeline import Pipeline
from fabtier.runner import warm_compiled_code

STATEMENT = "SELECT count(*) AS n FROM readings"
SWITCH_INTERVAL = 0.0005  # as fabtier.runner.Instance sets it
STATEMENTS_PER_S = 5
PHASES = ("sources", "view", "tiers", "run", "cpu")


@dataclass(frozen=True)
class SqlBench:
    machines: int = 1000
    sensors: int = 100
    rate_hz: float = 10.0
    seconds: float = 20.0
    repeat: int = 30
    rate: float = 1_700_000.0  # readings/s the instance would take between statements
    seed: int = 1


def _busy(stop: threading.Event) -> None:
    """Keep the interpreter lock: pure Python, no call that lets go of it."""
    while not stop.is_set():
        total = 0
        for i in range(2000):
            total += i * i


def _timed(pipeline: Pipeline, memory_limit: int) -> dict[str, float]:
    waits: dict[str, float] = {}
    began, cpu = time.perf_counter(), time.thread_time()
    sources = pipeline.sql_sources(STATEMENT, timings=waits)
    gathered = time.perf_counter()
    table = run_sql(sources, STATEMENT, memory_limit=memory_limit)
    done = time.perf_counter()
    if table.column("n")[0].as_py() != pipeline.metrics.readings_stored:
        raise AssertionError(f"count(*) {table.column('n')[0].as_py()} != {pipeline.metrics.readings_stored} stored")
    return {"sources": gathered - began, "view": waits.get("view", 0.0), "tiers": waits.get("tiers", 0.0),
            "run": done - gathered, "total": done - began, "cpu": time.thread_time() - cpu}


def _medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {name: round(statistics.median(s[name] for s in samples) * 1000, 2) for name in (*PHASES, "total")}


def run(bench: SqlBench, workdir: Path | None = None) -> dict:
    own_dir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fabtier-bench-sql-"))
    switch = sys.getswitchinterval()
    try:
        pipeline = open_pipeline(workdir / "data")
        warm_compiled_code()  # as an instance does before ingesting: the compiled paths
        try:
            stream = simulated_stream(bench.machines, bench.sensors, bench.rate_hz, bench.seconds, bench.seed)
            third = len(stream) // 3
            feed(pipeline, stream[:third])
            pipeline.seal()
            feed(pipeline, stream[third:2 * third])
            pipeline.seal()
            rest = stream[2 * third:]
            # The last third: half unsealed from the start, half appended between statements.
            feed(pipeline, rest[:len(rest) // 2])
            appended = rest[len(rest) // 2:]
            per_statement = max(1, int(bench.rate / STATEMENTS_PER_S / 500))  # messages of 500 readings
            lake_files = sum(1 for key, _ in pipeline.lake.store.list("raw/") if key.endswith(".parquet"))
            memory_limit = pipeline.settings.api.sql_memory_limit
            sys.setswitchinterval(SWITCH_INTERVAL)
            for _ in range(3):
                _timed(pipeline, memory_limit)  # sessions, caches, compiled code: ready
            alone = [_timed(pipeline, memory_limit) for _ in range(bench.repeat)]
            stop = threading.Event()
            busy = threading.Thread(target=_busy, args=(stop,), name="bench-busy", daemon=True)
            busy.start()
            try:
                beside = [_timed(pipeline, memory_limit) for _ in range(bench.repeat)]
                growing = []
                for k in range(bench.repeat):
                    chunk = appended[k * per_statement:(k + 1) * per_statement]
                    if not chunk:
                        break
                    feed(pipeline, chunk)
                    growing.append(_timed(pipeline, memory_limit))
            finally:
                stop.set()
                busy.join()
            unsealed = pipeline.unsealed.rows
            stored = pipeline.metrics.readings_stored
        finally:
            pipeline.stop(seal=False)
    finally:
        sys.setswitchinterval(switch)
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {"bench": "sql", **asdict(bench), "statement": STATEMENT, "readings": stored,
              "unsealed_readings": unsealed, "lake_files": lake_files, "alone_ms": _medians(alone),
              "beside_busy_ms": _medians(beside), "appending_ms": _medians(growing) if growing else None,
              "appended_per_statement": per_statement * 500, "statements": len(alone)}
    result["busy_over_alone"] = round(result["beside_busy_ms"]["total"] / max(result["alone_ms"]["total"], 1e-3), 2)
    return result


def report(result: dict) -> str:
    def line(name: str, ms: dict | None) -> str:
        if ms is None:
            return f"  {name:<28} (no readings left to append)"
        return f"  {name:<28} total {ms['total']:>7.1f} ms: " + ", ".join(f"{p} {ms[p]:.1f}" for p in PHASES)
    return "\n".join([
        f"sql: `{result['statement']}` over {result['readings']:,} readings ({result['machines']} machines x "
        f"{result['sensors']} sensors x {result['rate_hz']:g} Hz), {result['lake_files']} lake files and "
        f"{result['unsealed_readings']:,} unsealed; medians of {result['statements']} statements each",
        line("alone (baseline)", result["alone_ms"]),
        line("beside a busy thread", result["beside_busy_ms"]),
        line(f"+ {result['appended_per_statement']:,} appended each", result["appending_ms"]),
        f"  busy / alone: {result['busy_over_alone']}"])


def main(bench: SqlBench, as_json: bool) -> int:
    result = run(bench)
    print(report(result), flush=True)
    if as_json:
        print(json.dumps(result))
    return 0
