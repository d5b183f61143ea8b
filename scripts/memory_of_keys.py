"""What the ingest process holds for each sensor key at fab scale, measured (issue 13).

    .venv/bin/python scripts/memory_of_keys.py 100000
    .venv/bin/python scripts/memory_of_keys.py 1000000

Starts a pipeline in this process (a local mosquitto for its connection; nothing is published
through it), traces every allocation (tracemalloc) while the simulator's fab of KEYS / 100
machines x 100 sensors sends three seconds at 1 Hz through the ingest path
(`Pipeline.process`: decoding, the hot ring, alerts, the log, the unsealed rows), so that
every key appears with three readings, then asks SQL once (the names' dictionaries) and
prints what is still held, per part of the code that allocated it (the innermost frame in
this repository), in MiB and bytes a key; beside it the growth of the resident size, which
also holds what tracemalloc cannot see (the hot ring's rows are anonymous mappings, backed
as they are written).
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from fabtier.bench.harness import resident_mib
from fabtier.broker import LocalBroker, free_port
from fabtier.config import settings_from_mapping
from fabtier.runner import Instance
from simulator import SimConfig, generate_messages

VERBOSE = "-v" in sys.argv
ROOT = str(Path(__file__).resolve().parent.parent) + "/"
PARTS = (("tiers/keys.py", "key table (SensorKeys: names, ids, codes)"),
         ("tiers/hot", "hot ring bookkeeping (per-key counters; rows are mappings)"),
         ("alerts/", "alert state per sensor and rule"),
         ("ingest/codec.py", "decoder caches (names, layouts)"),
         ("ingest/", "decoding, the log's buffer"),
         ("tiers/unsealed.py", "unsealed readings and SQL's view (within max_unsealed)"),
         ("fabtier/", "pipeline"),
         ("", "elsewhere in fabtier"))


def part_of(trace: tracemalloc.Trace) -> str:
    for frame in reversed(trace.traceback):  # innermost first
        if frame.filename.startswith(ROOT) and "/.venv/" not in frame.filename:
            path = frame.filename[len(ROOT):]
            return next(label for prefix, label in PARTS if path.startswith(prefix)) + (
                f" [{path}]" if VERBOSE else "")
    return "libraries, no frame of fabtier"


def main(keys: int) -> int:
    machines = max(1, keys // 100)
    work = Path(tempfile.mkdtemp(prefix="fabtier-keys-"))
    broker = LocalBroker(work / "broker").start()
    settings = settings_from_mapping({"data_dir": str(work / "data"), "broker": {"url": broker.url,
                                      "client_id": "fabtier-memory-of-keys"}, "api": {"port": free_port()},
                                      "cold": {"seal_every": "1h"}}, env={})
    instance = Instance(settings).start()
    try:
        pipeline = instance.pipeline
        now = pipeline.clock.now_ms() - 3000
        messages = [(topic, payload, 1, 0) for topic, payload in generate_messages(
            SimConfig(machines=machines, sensors_per_machine=100, rate_hz=1.0, seed=1), now, now + 3000, batch=500)]
        rss_before = resident_mib("self")
        tracemalloc.start(25)
        began = time.monotonic()
        for i in range(0, len(messages), 50):
            pipeline.process(messages[i:i + 50])
        pipeline.sql_sources("SELECT count(*) FROM readings")
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        held: dict[str, int] = {}
        for trace in snapshot.traces:
            label = part_of(trace)
            held[label] = held.get(label, 0) + trace.size
        known = len(pipeline.keys)
        print(f"{known:,} keys ({machines:,} machines x 100 sensors), {pipeline.unsealed.rows:,} readings unsealed, "
              f"fed in {time.monotonic() - began:.0f} s with tracing")
        for label, size in sorted(held.items(), key=lambda item: -item[1]):
            print(f"  {size / 2**20:9.1f} MiB  {size / known:8.1f} B/key  {label}")
        print(f"  {sum(held.values()) / 2**20:9.1f} MiB  {sum(held.values()) / known:8.1f} B/key  traced in all")
        print(f"  resident size grew {resident_mib('self') - rss_before:,} MiB "
              f"(tracing's own bookkeeping included; the ring's rows: {pipeline.ring.capacity} slots a key reserved)")
    finally:
        instance.stop()
        broker.stop()
    return 0


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if a != "-v"]
    sys.exit(main(int(numbers[0]) if numbers else 100_000))
