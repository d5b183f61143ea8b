"""Peak memory of the two jobs that read or write many readings at once, each measured in this
process over its resident size before (sampled every 5 ms from /proc), with its time:

- `seal N`: sealing one log segment of N readings (8 machines x 250 sensors), as the forked
  seal child does it (`UnsealedData.sealable`, then `ColdLake.write_segment`);
- `rollup SECONDS`: a lake of SECONDS at 500,000 readings/s sealed in 2-second segments of
  1 M readings, rolled up after every 5 segments (`lifecycle.warmjobs.rollup`).

    .venv/bin/python scripts/memory_of_jobs.py seal 2000000
    .venv/bin/python scripts/memory_of_jobs.py rollup 60
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from fabtier.allocator import release_freed_memory, tune_allocator
from fabtier.bench.harness import resident_mib
from lifecycle import warmjobs
from lifecycle.audit import AuditLog
from tiers.cold import ColdLake
from tiers.keys import SensorKeys
from tiers.store import LocalStore
from tiers.unsealed import UnsealedData
from tiers.warm import WarmStore

T0 = 1_764_000_600_000  # a whole minute
SEGMENT = 1_000_000
T = TypeVar("T")


def peak_of(fn: Callable[[], T]) -> tuple[T, int, int, float]:
    """fn's result, the resident MiB before it, the peak while it ran, its seconds."""
    release_freed_memory()
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib("self"))
            time.sleep(0.005)
    before = resident_mib("self")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    result = fn()
    took = time.perf_counter() - began
    done.set()
    sampler.join()
    return result, before, max(peak[0], resident_mib("self")), took


def _segment(keys: SensorKeys, ids: np.ndarray, number: int, start: int, n: int) -> UnsealedData:
    unsealed = UnsealedData(keys)
    index = np.arange(start, start + n)
    values = np.random.default_rng(number).normal(20, 1, n).round(3)
    unsealed.add_readings(number, ids[index % len(ids)], (T0 + (index // len(ids)) * 4).astype(np.int64),
                          values, np.ones(n, bool))
    return unsealed


def main(argv: list[str]) -> int:
    tune_allocator()
    keys = SensorKeys()
    ids = np.array([keys.id_of(f"tool-{m:02d}", f"sensor-{s:04d}") for m in range(8) for s in range(250)], np.int32)
    with tempfile.TemporaryDirectory(prefix="fabtier-memory-") as tmp:
        lake = ColdLake(LocalStore(Path(tmp) / "lake"), writer_id="w0")
        if argv[0] == "seal":
            n = int(argv[1])
            unsealed = _segment(keys, ids, 1, 0, n)
            _, before, peak, took = peak_of(lambda: lake.write_segment(1, unsealed.sealable([1]), source="bench"))
            print(f"seal of {n:,} readings: {took:.1f} s; resident {before} -> peak {peak} MiB "
                  f"(+{peak - before}, {(peak - before) * 2**20 / n:.0f} bytes a reading)")
            return 0
        audit, warm = AuditLog(Path(tmp) / "audit.jsonl"), WarmStore(Path(tmp) / "warm.duckdb")
        for number in range(1, int(argv[1]) // 2 + 1):
            unsealed = _segment(keys, ids, number, (number - 1) * SEGMENT, SEGMENT)
            audit.record("seal", lake.write_segment(number, unsealed.sealable([number]), source="bench"), T0)
            if number % 5 == 0:
                report, before, peak, took = peak_of(lambda: warmjobs.rollup(store=lake.store, warm=warm, audit=audit))
                print(f"after {number} segments ({number * SEGMENT:,} readings): rollup of {report.files} files, "
                      f"{report.minutes} minutes, {took:.2f} s; resident {before} -> peak {peak} MiB (+{peak - before})")
        warm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
