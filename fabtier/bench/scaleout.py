"""`fabtier bench ingest --processes N`: the same stream and baseline as `bench ingest`,
taken by N `fabtier run` processes on one MQTT 5 shared subscription (`[broker]
share_group`), each with its own log, client id and writer id, all writing one lake.

The rate is readings / time from the first publish until the processes together have
acknowledged every message. Then every process is stopped (stopping seals what it holds),
and one more instance on the same lake, which holds nothing of its own, counts the lake:
lost = published - distinct keys, duplicates = stored - distinct keys, over all processes.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from core.errors import FabtierError
from fabtier.bench.harness import InstanceProcess, process_cpu_seconds
from fabtier.bench.ingest import (
    IngestBench,
    _baseline,
    _count_stored,
    _publish,
    _wait_acked,
    workload,
)
from fabtier.broker import NO_AUTOSAVE, LocalBroker


def run(bench: IngestBench, processes: int) -> dict:
    if shutil.which("mosquitto_sub") is None:
        raise FabtierError("mosquitto_sub is needed for the baseline: apt-get install mosquitto-clients")
    workdir = Path(tempfile.mkdtemp(prefix="fabtier-bench-scale-"))
    lake = f"file://{workdir / 'lake'}"
    start_ms = int(time.time() * 1000) - int(bench.seconds * 1000)
    work = workload(bench, start_ms)
    messages, readings = len(work.messages), work.readings
    result: dict = {"bench": "ingest", "mode": "max", "processes": processes, "seconds_of_data": bench.seconds,
                    "machines": bench.machines, "sensors_per_machine": bench.sensors, "rate_hz": bench.rate_hz,
                    "batch": bench.batch, "messages": messages, "readings": readings}
    broker = LocalBroker(workdir / "broker", autosave_s=NO_AUTOSAVE).start()
    members: list[InstanceProcess] = []
    keep_logs = False
    try:
        elapsed = _baseline(bench, broker, work)
        result["baseline_readings_per_s"] = round(readings / elapsed)
        for i in range(processes):
            members.append(InstanceProcess(
                workdir, broker_url=broker.url, name=f"member{i}", broker_toml='share_group = "bench"\n',
                extra_toml=f'[cold]\nstore = "{lake}"\nwriter_id = "w{i}"\n').start())
        cpu_before = sum(m.cpu_seconds() for m in members)
        broker_cpu_before = process_cpu_seconds(broker.pid)
        marks: list[float] = []
        publisher = threading.Thread(target=lambda: _publish(bench, broker, work,
                                                             on_first=lambda: marks.append(time.monotonic())))
        publisher.start()
        while not marks:
            time.sleep(0.01)
        elapsed = _wait_acked(members, messages, marks[0], samples=[])
        publisher.join()
        acked = [m.metrics()["acked"] for m in members]
        result["fabtier_seconds"] = round(elapsed, 3)
        result["fabtier_readings_per_s"] = round(readings / elapsed)
        result["ratio_to_baseline"] = round(result["fabtier_readings_per_s"] / result["baseline_readings_per_s"], 3)
        result["messages_per_process"] = acked
        cpu = sum(m.cpu_seconds() for m in members) - cpu_before
        result["fabtier_cpu_us_per_reading"] = round(cpu / readings * 1e6, 3)
        result["broker_cpu_seconds"] = round(process_cpu_seconds(broker.pid) - broker_cpu_before, 2)
        for m in members:
            m.stop()  # seals everything it holds into the shared lake
        counter = InstanceProcess(workdir, broker_url=broker.url, name="counter",
                                  extra_toml=f'[cold]\nstore = "{lake}"\nwriter_id = "count"\n').start()
        members.append(counter)
        stored, distinct = _count_stored(counter, bench, readings)
        result.update(stored=stored, distinct=distinct, lost=readings - distinct, duplicates=stored - distinct)
    except BaseException:
        keep_logs = True
        print(f"fabtier bench ingest --processes failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        for m in members:
            m.stop()
        broker.stop()
        if not keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(result: dict) -> str:
    return "\n".join([
        f"fabtier bench ingest ({result['processes']} processes, one shared subscription): "
        f"{result['readings']:,} readings in {result['messages']:,} messages",
        f"  plain subscriber (mosquitto_sub): {result['baseline_readings_per_s']:>12,} readings/s",
        f"  fabtier, all processes, durable and acknowledged: {result['fabtier_readings_per_s']:>11,} readings/s "
        f"(messages per process: {result['messages_per_process']})",
        f"  ratio to the plain subscriber: {result['ratio_to_baseline']:.2f}",
        f"  fabtier used {result['fabtier_cpu_us_per_reading']:.2f} us of CPU per reading (all processes)",
        f"  stored {result['stored']:,}, lost {result['lost']}, duplicates {result['duplicates']}",
    ])
