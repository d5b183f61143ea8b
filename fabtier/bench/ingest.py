"""`fabtier bench ingest`: readings per second stored, lost and doubled, against a plain
subscriber measured on the same message stream in the same run.

Both phases publish the same deterministic simulator stream (seeded, same start time)
through one local mosquitto as fast as the broker takes it. The stream is generated once, into
memory, before either phase (`Workload`): generating it while publishing cost the publisher
0.3 us a reading at 4,000 sensors and 0.7 us at 100,000 (the simulator's model and JSON), up to
two thirds of a core of this 2-core machine taken from the broker, the subscriber and fabtier,
more the more sensors; a fab's gateways are other machines.
1. baseline: `mosquitto_sub -q 1` to /dev/null receives it; the rate is readings / time from
   the first publish until it has received the last message;
2. fabtier: `fabtier run` (its own process) receives it; the rate is readings / time from the
   first publish until fabtier has acknowledged the last message (durable in its log).
Then fabtier is asked through SQL how many readings it holds and how many distinct keys:
lost = published - distinct, duplicates = stored - distinct.
With --live the stream is instead paced in real time at machines x sensors x rate_hz, to
show that fabtier keeps up with a sustained load (its backlog stays bounded).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from core.errors import FabtierError
from fabtier.bench.harness import CpuShares, InstanceProcess, process_cpu_seconds, resident_mib
from fabtier.bench.sqlprobe import PROBE_SQL, SqlProbeProcess
from fabtier.broker import NO_AUTOSAVE, LocalBroker
from simulator import FabModel, SimConfig, generate_messages, publish_stream, run_simulator
from simulator.payloads import Message, readings_in


@dataclass(frozen=True)
class IngestBench:
    seconds: float = 10.0
    machines: int = 40
    sensors: int = 50
    rate_hz: float = 500.0
    batch: int = 500
    live: bool = False
    seed: int = 1
    queries_per_s: float = 0.0  # SQL statements a second through the API while ingesting


def _stream(bench: IngestBench, start_ms: int):
    config = SimConfig(machines=bench.machines, sensors_per_machine=bench.sensors, rate_hz=bench.rate_hz,
                       seed=bench.seed)
    return generate_messages(config, start_ms, start_ms + int(bench.seconds * 1000), batch=bench.batch)


@dataclass(frozen=True)
class Workload:
    """The whole stream, ready to publish (its payloads hold 32-35 bytes a reading: ~1 GB for
    30 M readings), and how many readings it holds."""

    messages: list[Message]
    readings: int


def workload(bench: IngestBench, start_ms: int) -> Workload:
    messages = list(_stream(bench, start_ms))
    return Workload(messages, sum(readings_in(topic, payload) for topic, payload in messages))


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    """A pipe of a child process started with it (stdin or stderr=subprocess.PIPE)."""
    if stream is None:
        raise FabtierError("the child process was started without this pipe")
    return stream


def _publish(bench: IngestBench, broker: LocalBroker, work: Workload, on_first) -> None:
    """Publish the stream as fast as the broker takes it, QoS 1.

    Batches go through paho (simulator.publish_stream). Single readings would make a Python
    publisher the bottleneck, so each topic's messages are piped into its own
    `mosquitto_pub -l` (C, one message per line) instead."""
    if bench.batch > 1:
        publish_stream(iter(work.messages), broker_url=broker.url, on_first=on_first)
        return
    lines: dict[str, list[bytes]] = {}
    for topic, payload in work.messages:
        lines.setdefault(topic, []).append(payload)
    on_first()
    pubs = [subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                              "-t", topic, "-l"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            for topic in lines]
    for pub, payloads in zip(pubs, lines.values(), strict=True):
        _pipe(pub.stdin).write(b"\n".join(payloads) + b"\n")
        _pipe(pub.stdin).close()
    for pub in pubs:
        if pub.wait(timeout=600) != 0:
            raise FabtierError(f"mosquitto_pub failed: {_pipe(pub.stderr).read().decode()}")


def _baseline(bench: IngestBench, broker: LocalBroker, work: Workload) -> float:
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                            "-t", "fab/#", "-t", "fab-ctx/#", "-C", str(len(work.messages))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # let it subscribe
    began = []
    _publish(bench, broker, work, on_first=lambda: began.append(time.monotonic()))
    if sub.wait(timeout=600) != 0:
        raise FabtierError(f"mosquitto_sub failed: {_pipe(sub.stderr).read().decode()}")
    return time.monotonic() - began[0]


def _pick(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


class _SeriesProbe(threading.Thread):
    """While ingestion runs: "the last 10 minutes of sensor X in 300 points" from the hot
    ring, for random sensors. Timed inside the instance (the ring's answer, any wait for the
    ingest lock included) and, for context, as the HTTP round trip seen by this client."""

    def __init__(self, instance: InstanceProcess, bench: IngestBench) -> None:
        super().__init__(daemon=True)
        model = FabModel(SimConfig(machines=bench.machines, sensors_per_machine=bench.sensors,
                                   rate_hz=bench.rate_hz, seed=bench.seed), 0)
        self.pairs = [(m, sen) for m in model.machines for sen in model.sensors(m)]
        self.instance = instance
        self.took_us: list[float] = []
        self.waited_us: list[float] = []
        self.fell_back = 0
        self.gil_wait_us: list[float] = []
        self.round_trip_us: list[float] = []
        self.points: list[int] = []
        self.unknown = 0  # answers 404: asked before the sensor's first reading
        self.done = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        while not self.done.is_set():
            machine, sensor = rng.choice(self.pairs)
            query = urllib.parse.urlencode({"machine": machine, "sensor": sensor, "minutes": 10, "points": 300})
            sent = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{self.instance.url}/series?{query}", timeout=10) as response:
                    answer = json.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
                self.unknown += 1  # the sensor's first reading has not arrived yet
                time.sleep(0.02)
                continue
            self.round_trip_us.append((time.perf_counter() - sent) * 1e6)
            self.took_us.append(answer["query_us"])
            self.waited_us.append(answer["wait_us"])
            self.fell_back += bool(answer.get("fell_back"))
            self.gil_wait_us.append(answer["gil_wait_us"])
            self.points.append(len(answer["ts"]))
            time.sleep(0.02)

    def summary(self) -> dict:
        took, waited, trips = sorted(self.took_us), sorted(self.waited_us), sorted(self.round_trip_us)
        gil = sorted(self.gil_wait_us)
        if not took:
            return {}

        return {"series_queries": len(took), "series_query_us_p50": _pick(took, 0.5),
                "series_query_us_p99": _pick(took, 0.99), "series_query_us_max": took[-1],
                "series_lock_wait_us_p50": _pick(waited, 0.5), "series_lock_wait_us_p99": _pick(waited, 0.99),
                "series_fell_back_to_lock": self.fell_back,
                "series_gil_wait_us_p50": _pick(gil, 0.5), "series_gil_wait_us_p99": _pick(gil, 0.99),
                "series_round_trip_us_p50": round(_pick(trips, 0.5), 1),
                "series_round_trip_us_p99": round(_pick(trips, 0.99), 1),
                "series_points_max": max(self.points)}


def sql_summary(probed: dict) -> dict:
    """The SQL probe's figures (fabtier.bench.sqlprobe): round trips p50/p99/max, and the
    instance's own phases (p50)."""
    took = sorted(probed["took_ms"])
    out: dict = {"sql_queries": len(took), "sql_statement": PROBE_SQL}
    if took:
        out.update(sql_ms_p50=round(_pick(took, 0.5), 1), sql_ms_p99=round(_pick(took, 0.99), 1),
                   sql_ms_max=round(took[-1], 1),
                   sql_server_ms_p50={name: round(_pick(sorted(ms), 0.5), 1)
                                      for name, ms in probed["phases_ms"].items()})
    if probed["error"]:
        out["sql_error"] = probed["error"]
    return out


def steady_rate(samples: list, elapsed: float) -> dict:
    """The rate of readings stored over the second half of the run: ingestion once the keys
    have appeared (a fab's sensors are known within its first seconds; at 100,000 sensors the
    ring's re-layouts while they appear, and the first write to each sensor's memory, take
    seconds that a long run does not see again). Empty when too few samples were taken."""
    later = [s for s in samples if elapsed / 2 <= s[0] <= elapsed]
    if len(later) < 2 or later[-1][0] - later[0][0] < 1.0:
        return {}
    (t0, _, stored0, _), (t1, _, stored1, _) = later[0], later[-1]
    return {"steady_readings_per_s": round((stored1 - stored0) / (t1 - t0)),
            "steady_from_s": round(t0, 2), "steady_to_s": round(t1, 2)}


def _wait_acked(instances: list[InstanceProcess], messages: int, began: float, samples: list) -> float:
    """Seconds from `began` until the instances together have acknowledged `messages`;
    `samples` gets (seconds, messages, readings stored, resident MiB of all instances)."""
    while True:
        metrics = [instance.metrics() for instance in instances]
        now = time.monotonic()
        samples.append((now - began, sum(m["messages"] for m in metrics),
                        sum(m["readings_stored"] for m in metrics),
                        sum(resident_mib(instance.pid) for instance in instances)))
        if sum(m["acked"] for m in metrics) >= messages:
            return now - began
        if now - began > 3600:
            raise FabtierError("fabtier did not take the whole stream within an hour")
        time.sleep(0.05)


# Readings counted by one statement at most (about): one DISTINCT over ~100 M keys would
# need more than `[api] sql_memory_limit`.
_COUNT_READINGS = 20_000_000


def _count_stored(instance: InstanceProcess, bench: IngestBench, readings: int) -> tuple[int, int]:
    """Readings stored, and distinct (machine, sensor, ts) among them, asked a group of
    machines at a time (at least 8, about _COUNT_READINGS readings)."""
    machines = FabModel(SimConfig(machines=bench.machines, sensors_per_machine=bench.sensors,
                                  rate_hz=bench.rate_hz, seed=bench.seed), 0).machines
    quoted = ["'" + m.replace("'", "''") + "'" for m in machines]
    group = max(8, len(machines) * _COUNT_READINGS // max(readings, 1))
    stored = distinct = 0
    for i in range(0, len(quoted), group):
        names = ", ".join(quoted[i:i + group])
        counts = instance.sql(f"SELECT count(*) AS n, count(DISTINCT (machine, sensor, ts)) AS d "
                              f"FROM readings WHERE machine IN ({names})")[0]
        stored, distinct = stored + counts["n"], distinct + counts["d"]
    # Rows under a machine the stream does not have are stored but match nothing published:
    # they count as duplicates, never against the lost ones.
    others = instance.sql(f"SELECT count(*) AS n FROM readings WHERE machine NOT IN ({', '.join(quoted)})")[0]["n"]
    return stored + others, distinct


def run(bench: IngestBench, workdir: Path | None = None) -> dict:
    if shutil.which("mosquitto_sub") is None:
        raise FabtierError("mosquitto_sub is needed for the baseline: apt-get install mosquitto-clients")
    own_dir = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="fabtier-bench-"))
    start_ms = int(time.time() * 1000) - int(bench.seconds * 1000)  # inside max_late/max_future
    # A live run generates its stream as it publishes, and counts it then (`result["live"]`).
    work = None if bench.live else workload(bench, start_ms)
    messages, readings = (0, 0) if work is None else (len(work.messages), work.readings)
    result: dict = {"bench": "ingest", "mode": "live" if bench.live else "max", "seconds_of_data": bench.seconds,
                    "machines": bench.machines, "sensors_per_machine": bench.sensors, "rate_hz": bench.rate_hz,
                    "batch": bench.batch, "messages": messages, "readings": readings,
                    "queries_per_s": bench.queries_per_s}
    broker = LocalBroker(workdir / "broker", autosave_s=NO_AUTOSAVE).start()
    instance = None
    try:
        if work is not None:
            elapsed = _baseline(bench, broker, work)
            result["baseline_readings_per_s"] = round(readings / elapsed)
            result["baseline_messages_per_s"] = round(messages / elapsed)
        instance = InstanceProcess(workdir, broker_url=broker.url).start()
        cpu_before = instance.cpu_seconds()
        broker_cpu_before = process_cpu_seconds(broker.pid)
        samples: list = []
        probe = _SeriesProbe(instance, bench)
        probe.start()
        sql_probe = SqlProbeProcess(instance.url, bench.queries_per_s) if bench.queries_per_s > 0 else None
        if sql_probe is not None:
            sql_probe.wait_ready()
        # Where the machine's cores go while fabtier takes the stream: the instance, the broker,
        # this process (the publisher, the /series probe, the polling), the SQL client.
        pids = {"fabtier": instance.pid, "broker": broker.pid, "bench": os.getpid()}
        if sql_probe is not None:
            pids["sql_client"] = sql_probe.pid
        shares = CpuShares(pids)
        began = time.monotonic()
        shares.start()
        if bench.live:
            publisher = threading.Thread(target=lambda: result.update(live=run_simulator(
                broker_url=broker.url, machines=bench.machines, sensors=bench.sensors, rate_hz=bench.rate_hz,
                batch=bench.batch, seconds=bench.seconds, seed=bench.seed).__dict__))
            publisher.start()
            while publisher.is_alive():
                metrics = instance.metrics()
                samples.append((time.monotonic() - began, metrics["messages"], metrics["readings_stored"],
                                resident_mib(instance.pid)))
                time.sleep(0.25)
            publisher.join()
            messages, readings = result["live"]["messages"], result["live"]["readings"]
            result.update(messages=messages, readings=readings)
            elapsed = _wait_acked([instance], messages, began, samples)
            drain = elapsed - result["live"]["seconds"]
            result["drain_after_publisher_s"] = round(max(0.0, drain), 2)
        else:
            assert work is not None  # generated for a run at full speed
            marks: list[float] = []
            thread = threading.Thread(target=lambda: _publish(
                bench, broker, work, on_first=lambda: marks.append(time.monotonic())))
            thread.start()
            while not marks:
                time.sleep(0.01)
            began = marks[0]
            shares.start()
            elapsed = _wait_acked([instance], messages, began, samples)
            thread.join()
        result["cpu_cores"] = shares.stop()
        probe.done.set()
        probe.join()
        result.update(probe.summary())
        if sql_probe is not None:
            result.update(sql_summary(sql_probe.finish()))
        result["peak_rss_mib"] = max((s[3] for s in samples), default=0)
        cpu = instance.cpu_seconds() - cpu_before
        result["fabtier_cpu_seconds"] = round(cpu, 2)
        result["fabtier_cpu_us_per_reading"] = round(cpu / readings * 1e6, 3)
        result["broker_cpu_seconds"] = round(process_cpu_seconds(broker.pid) - broker_cpu_before, 2)
        result["fabtier_seconds"] = round(elapsed, 3)
        result["fabtier_readings_per_s"] = round(readings / elapsed)
        result["fabtier_messages_per_s"] = round(messages / elapsed)
        if "baseline_readings_per_s" in result:
            result["ratio_to_baseline"] = round(result["fabtier_readings_per_s"] / result["baseline_readings_per_s"], 3)
        result.update(steady_rate(samples, elapsed))
        backlog = [s[1] for s in samples]
        stored, distinct = _count_stored(instance, bench, readings)
        metrics = instance.metrics()
        result.update(stored=stored, distinct=distinct, lost=readings - distinct,
                      duplicates=stored - distinct, quarantined=metrics["quarantined"],
                      duplicates_dropped_at_ingest=metrics["duplicates_dropped"],
                      wal_commits=metrics["commits"], messages_seen=max(backlog) if backlog else 0,
                      # Commits whose acknowledgements waited for a seal (unsealed rows at
                      # `[ingest] max_unsealed`), and the seals: why a run was slower than its pair.
                      backpressure_commits=metrics["backpressure_commits"],
                      segments_sealed=metrics["segments_sealed"])
    except BaseException:
        own_dir = False  # the instance's and the broker's logs stay for the post-mortem
        print(f"fabtier bench ingest failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        if instance is not None:
            instance.stop()
        broker.stop()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


_CPU_NAMES = {"fabtier": "fabtier", "broker": "broker", "bench": "the bench's publisher and probes",
              "sql_client": "SQL client", "other": "other processes", "machine": "machine"}


def cpu_cores_text(cores: dict) -> str:
    """`fabtier 1.02, broker 0.31, ...` in `_CPU_NAMES`' order, those measured."""
    return ", ".join(f"{label} {cores[name]:.2f}" for name, label in _CPU_NAMES.items() if name in cores)


def report(result: dict) -> str:
    lines = [f"fabtier bench ingest ({result['mode']}): {result['readings']:,} readings in "
             f"{result['messages']:,} messages ({result['machines']} machines x {result['sensors_per_machine']} "
             f"sensors x {result['rate_hz']:g} Hz, batch {result['batch']})"]
    if "baseline_readings_per_s" in result:
        lines.append(f"  plain subscriber (mosquitto_sub): {result['baseline_readings_per_s']:>12,} readings/s")
    lines.append(f"  fabtier, durable and acknowledged: {result['fabtier_readings_per_s']:>11,} readings/s "
                 f"({result['fabtier_messages_per_s']:,} messages/s)")
    if "ratio_to_baseline" in result:
        lines.append(f"  ratio to the plain subscriber: {result['ratio_to_baseline']:.2f}")
    if "steady_readings_per_s" in result:
        lines.append(f"  second half of the run ({result['steady_from_s']:g}-{result['steady_to_s']:g} s): "
                     f"{result['steady_readings_per_s']:,} readings/s stored")
    if "drain_after_publisher_s" in result:
        lines.append(f"  publisher ran {result['live']['seconds']:.1f} s; fabtier finished "
                     f"{result['drain_after_publisher_s']:.2f} s after it")
    lines.append(f"  fabtier used {result['fabtier_cpu_seconds']:.1f} CPU-seconds: "
                 f"{result['fabtier_cpu_us_per_reading']:.2f} us per reading (the broker: "
                 f"{result['broker_cpu_seconds']:.1f} CPU-seconds)")
    if "cpu_cores" in result:
        lines.append(f"  while fabtier took the stream, in cores of {result['cpu_cores']['cores']:g}: "
                     + cpu_cores_text(result["cpu_cores"]))
    if "series_query_us_p50" in result:
        lines.append(f"  hot ring, last 10 min of one sensor in <= 300 points, while ingesting: "
                     f"p50 {result['series_query_us_p50']:.0f} us, p99 {result['series_query_us_p99']:.0f} us, "
                     f"max {result['series_query_us_max']:.0f} us ({result['series_queries']} queries, "
                     f"{result['series_fell_back_to_lock']} waited for the ingest lock: p99 "
                     f"{result['series_lock_wait_us_p99']:.0f} us); before it, getting the interpreter lock: "
                     f"p50 {result['series_gil_wait_us_p50']:.0f} us, p99 {result['series_gil_wait_us_p99']:.0f} us; "
                     f"HTTP round trip from the bench: "
                     f"p50 {result['series_round_trip_us_p50'] / 1000:.1f} ms, "
                     f"p99 {result['series_round_trip_us_p99'] / 1000:.1f} ms")
    if "sql_queries" in result:
        lines.append(f"  SQL while ingesting ({result['queries_per_s']:g}/s, `{result['sql_statement']}` over "
                     f"HTTP): {result['sql_queries']} statements, p50 {result.get('sql_ms_p50', 0):.1f} ms, "
                     f"p99 {result.get('sql_ms_p99', 0):.1f} ms, max {result.get('sql_ms_max', 0):.1f} ms"
                     + ("; in the instance (p50): " + ", ".join(
                         f"{name} {ms:.1f} ms" for name, ms in result["sql_server_ms_p50"].items())
                        if result.get("sql_server_ms_p50") else "")
                     + (f"; stopped by an error: {result['sql_error']}" if "sql_error" in result else ""))
    lines.append(f"  peak resident memory of fabtier: {result['peak_rss_mib']:,} MiB")
    lines.append(f"  stored {result['stored']:,}, lost {result['lost']}, duplicates {result['duplicates']}")
    lines.append(f"  {result['segments_sealed']} log segments sealed while it ran; {result['backpressure_commits']} "
                 "group commits held their acknowledgements back for a seal")
    return "\n".join(lines)
