"""`fabtier bench soak`: resident memory, open files and threads of a running instance over
minutes of sustained load, against the memory its configuration promises.

An instance (`fabtier run`, its own process; a seal every 2 s, a hot window of 2 min, sealing
in a forked child, the scheduler's jobs on) takes paced load from `feeders` `mosquitto_pub -l`
processes, each fed fresh 500-reading batches (every reading a new key) by a thread of this
process. Every 10 s the bench samples from /proc: the instance's resident memory, that of its
seal children (separately: copy-on-write pages they share with the parent count in both),
its open files and threads, and from /metrics the readings stored per second and what is
unsealed. At the end it waits until every message is acknowledged, counts the lake and the
unsealed rows through SQL (lost = sent - distinct, duplicates = stored - distinct, as
`bench ingest`), and compares the peak resident memory with what the configuration promises:
`[hot] memory_budget + [ingest] max_unsealed` plus the instance's resident memory before the
load (interpreter, numpy, Arrow, DuckDB, numba) plus OVERHEAD.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

from core.errors import FabtierError, UserError
from fabtier.bench.harness import InstanceProcess, proc_status
from fabtier.broker import LocalBroker

SAMPLE_EVERY = 10.0
BATCH = 500
MIB = 1 << 20
# Beyond the budgets and the idle instance: the per-minute rollup's partial aggregates and
# batches (~150 MiB measured alone by scripts/memory_of_jobs.py, up to ~300 MiB in a running
# instance), the inbox (at most 64 MiB of payloads), the micro-batch being decoded, the log's
# write buffer, a sealed segment's hand-back, allocator slack. Measured, see README "Measured":
# peaks of budgets + idle + 337 MiB at 500,000 readings/s, + 484 MiB before the log closed
# segments at 2 M readings.
OVERHEAD = 512 * MIB


@dataclass(frozen=True)
class SoakBench:
    minutes: float = 3.0
    rate: float = 500_000.0  # readings/s offered, over all feeders
    feeders: int = 8
    sensors: int = 250  # per feeder; each feeder is one machine (one topic per mosquitto_pub)
    hot_budget: int = 512 * MIB  # [hot] memory_budget; 0: the configuration's default
    max_unsealed: int = 512 * MIB  # [ingest] max_unsealed; 0: the configuration's default
    seal_every: str = "2s"
    window: str = "2m"
    sample_every: float = SAMPLE_EVERY
    extra_toml: str = ""  # appended to the instance's configuration (e.g. to single out a job)
    busy: int = 0  # processes of other work beside the instance, each keeping one core busy


def _private_kib(pid: int) -> int:
    """Memory only this process has (not shared with its parent by fork, nor the ring's shared
    mapping): Private_Clean + Private_Dirty of /proc/PID/smaps_rollup."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("Private_"))


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class _Feeder(threading.Thread):
    """One `mosquitto_pub -l` (one topic: one machine) fed paced batches by this thread: each
    line is `500 // sensors` time steps of all the machine's sensors (500 readings when the
    sensors divide 500), each step
    `period_ms` after the last, so every reading is a new key. Behind its pace (the broker
    or the instance holds it back) it sends at once until it has caught up."""

    def __init__(self, port: int, machine: str, sensors: int, period_ms: int, start_ms: int,
                 stop: threading.Event) -> None:
        super().__init__(name=f"feeder-{machine}", daemon=True)
        self.machine, self.period_ms, self.start_ms, self.stop = machine, period_ms, start_ms, stop
        self.steps = max(1, BATCH // sensors)
        self.sensor_column = [f"s{i:03d}" for i in range(sensors)] * self.steps
        self.sensors = sensors
        rng = np.random.default_rng(zlib.crc32(machine.encode()))
        self.values = np.round(rng.uniform(10, 90, len(self.sensor_column)), 2)
        self.messages = self.readings = 0
        self.error: str | None = None
        self.pub = subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                                     "-t", f"fab/{machine}", "-l"], stdin=subprocess.PIPE,
                                    stderr=subprocess.PIPE)

    def run(self) -> None:
        try:
            self._feed()
        except Exception as exc:  # a broken pipe: mosquitto_pub died; reported by finish()
            self.error = f"{type(exc).__name__}: {exc}"

    def _feed(self) -> None:
        stdin = self.pub.stdin
        assert stdin is not None
        began = time.monotonic()
        step_s = self.period_ms * self.steps / 1000
        sent_steps = 0
        offsets = np.repeat(np.arange(self.steps, dtype=np.int64), self.sensors) * self.period_ms
        while not self.stop.is_set():
            due = int((time.monotonic() - began) / step_s) + 1  # messages due by now
            lines = []
            for _ in range(min(due - self.messages, 200)):
                ts = self.start_ms + sent_steps * self.period_ms + offsets
                lines.append(orjson.dumps({"ts": ts, "sensor": self.sensor_column, "v": self.values},
                                          option=orjson.OPT_SERIALIZE_NUMPY))
                sent_steps += self.steps
                self.messages += 1
                self.readings += len(self.sensor_column)
            if lines:
                stdin.write(b"\n".join(lines) + b"\n")
                stdin.flush()
            else:
                self.stop.wait(min(step_s, 0.05))

    def finish(self) -> None:
        """Close the feed and wait until mosquitto_pub has had every message acknowledged."""
        if self.pub.stdin is not None:
            try:
                self.pub.stdin.close()
            except OSError:
                pass
        if self.pub.wait(timeout=600) != 0:
            stderr = self.pub.stderr.read().decode() if self.pub.stderr else ""
            raise FabtierError(f"mosquitto_pub for {self.machine} failed: {stderr}")
        if self.error:
            raise FabtierError(f"feeding mosquitto_pub for {self.machine}: {self.error}")


def _sample(instance: InstanceProcess, began: float, last: dict | None) -> dict:
    now = time.monotonic()
    pid = instance.pid
    own = proc_status(pid)
    children = _children(pid)
    child_rss = sum(proc_status(c).get("VmRSS", 0) for c in children)
    child_private = sum(_private_kib(c) for c in children)
    metrics = instance.metrics()
    row = {"t": round(now - began, 1), "rss_mib": round(own.get("VmRSS", 0) / 1024),
           "anon_mib": round(own.get("RssAnon", 0) / 1024), "seal_children": len(children),
           "children_rss_mib": round(child_rss / 1024), "children_private_mib": round(child_private / 1024),
           "open_files": _open_files(pid),
           "threads": own.get("Threads", 0), "stored": metrics["readings_stored"],
           "unsealed_rows": metrics["unsealed_rows"], "inbox": metrics["inbox"],
           "backpressure": bool(metrics["backpressure"]), "_at": now}
    if last is not None and now > last["_at"]:
        row["readings_per_s"] = round((row["stored"] - last["stored"]) / (now - last["_at"]))
    else:
        row["readings_per_s"] = 0
    return row


def _count(instance: InstanceProcess, machines: list[str]) -> tuple[int, int]:
    """Readings stored and distinct keys among them, a machine at a time (one DISTINCT over
    a hundred million keys would need more than [api] sql_memory_limit)."""
    stored = distinct = 0
    for machine in machines:
        row = instance.sql(f"SELECT count(*) AS n, count(DISTINCT (sensor, ts)) AS d FROM readings "
                           f"WHERE machine = '{machine}'")[0]
        stored, distinct = stored + row["n"], distinct + row["d"]
    others = instance.sql("SELECT count(*) AS n FROM readings WHERE machine NOT IN ("
                          + ", ".join(f"'{m}'" for m in machines) + ")")[0]["n"]
    return stored + others, distinct


# What the instance's log says, counted: a seal whose child was lost runs in the instance
# itself (and then costs its memory); the scheduler's other jobs read the lake in-process.
_LOG_LINES = {"seals": "sealed ", "seals_in_process": "sealing it in this process",
              "rollups": "rolled up", "verifies": "verified ", "backpressure_spells": "backpressure:"}


# Other work on the same machine, at normal priority (a build, a backup, another service):
# what an instance shares its cores with in a plant, and what can starve a low-priority seal.
_BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def _start_busy(count: int, seconds: float) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", _BUSY.format(seconds=seconds)]) for _ in range(count)]


def _config(bench: SoakBench) -> str:
    hot = f'memory_budget = {bench.hot_budget}\n' if bench.hot_budget else ""
    ingest = f'max_unsealed = {bench.max_unsealed}\n' if bench.max_unsealed else ""
    return (f'[hot]\nwindow = "{bench.window}"\n{hot}'
            f'[ingest]\nmax_future = "15m"\n{ingest}'
            f'[cold]\nseal_every = "{bench.seal_every}"\n' + bench.extra_toml)


def run(bench: SoakBench, *, echo=None) -> dict:
    """The soak; `echo(row)` is called with every sample as it is taken."""
    if shutil.which("mosquitto_pub") is None:
        raise FabtierError("mosquitto_pub is needed: apt-get install mosquitto-clients")
    from core.settings import HotSettings, IngestSettings

    hot_budget = bench.hot_budget or HotSettings().memory_budget
    max_unsealed = bench.max_unsealed or IngestSettings().max_unsealed
    machines = [f"soak{i:02d}" for i in range(bench.feeders)]
    per_sensor_hz = bench.rate / (bench.feeders * bench.sensors)
    if not 0 < per_sensor_hz <= 1000:
        raise UserError(f"bench soak: --rate {bench.rate:g} over {bench.feeders} feeders x {bench.sensors} "
                        "sensors is more than 1000 Hz a sensor (timestamps are in ms) or not positive")
    period_ms = max(1, round(1000 / per_sensor_hz))
    workdir = Path(tempfile.mkdtemp(prefix="fabtier-bench-soak-"))
    result: dict = {"bench": "soak", **asdict(bench), "hot_budget": hot_budget, "max_unsealed": max_unsealed,
                    "period_ms": period_ms,
                    "offered_readings_per_s": round(bench.feeders * bench.sensors * 1000 / period_ms)}
    broker = LocalBroker(workdir / "broker").start()
    instance = InstanceProcess(workdir, broker_url=broker.url, name="soak", extra_toml=_config(bench))
    feeders: list[_Feeder] = []
    busy: list[subprocess.Popen] = []
    stop = threading.Event()
    keep = False
    samples: list[dict] = []
    try:
        instance.start()
        time.sleep(2)  # the ring's compiled kernel and the scheduler's first run settle
        idle = _sample(instance, time.monotonic(), None)
        result["idle_rss_mib"], result["idle_open_files"] = idle["rss_mib"], idle["open_files"]
        start_ms = int(time.time() * 1000)
        feeders = [_Feeder(broker.port, m, bench.sensors, period_ms, start_ms, stop) for m in machines]
        began = time.monotonic()
        busy = _start_busy(bench.busy, bench.minutes * 60)
        for feeder in feeders:
            feeder.start()
        last = _sample(instance, began, None)
        samples.append(last)
        if echo:
            echo(last)
        end = began + bench.minutes * 60
        while time.monotonic() < end:
            time.sleep(max(0.0, min(bench.sample_every - (time.monotonic() - last["_at"]), end - time.monotonic())))
            last = _sample(instance, began, last)
            samples.append(last)
            if echo:
                echo(last)
            if any(f.error for f in feeders) or any(f.pub.poll() is not None for f in feeders):
                break
        stop.set()
        fed_for = time.monotonic() - began
        for feeder in feeders:
            feeder.join()
            feeder.finish()
        messages = sum(f.messages for f in feeders)
        readings = sum(f.readings for f in feeders)
        deadline = time.monotonic() + 600
        while instance.metrics()["acked"] < messages:
            if time.monotonic() > deadline:
                raise FabtierError("the instance did not acknowledge every message within 10 minutes")
            time.sleep(0.2)
        drained = time.monotonic() - began
        final = _sample(instance, began, last)
        samples.append(final)
        stored, distinct = _count(instance, machines)
        log_text = instance.log_path.read_text(errors="replace")
        result["log"] = {what: log_text.count(text) for what, text in _LOG_LINES.items()}
        peak = max(s["rss_mib"] for s in samples)
        bound = round((hot_budget + max_unsealed + OVERHEAD) / MIB) + result["idle_rss_mib"]
        result.update(
            messages=messages, readings=readings, fed_seconds=round(fed_for, 1),
            readings_per_s=round(readings / drained), drain_after_feeders_s=round(drained - fed_for, 1),
            stored=stored, distinct=distinct, lost=readings - distinct, duplicates=stored - distinct,
            peak_rss_mib=peak, peak_children_rss_mib=max(s["children_rss_mib"] for s in samples),
            peak_children_private_mib=max(s["children_private_mib"] for s in samples),
            bound_mib=bound, overhead_mib=OVERHEAD // MIB, within_bound=peak <= bound,
            open_files_start=samples[0]["open_files"], open_files_end=final["open_files"],
            threads_start=samples[0]["threads"], threads_end=final["threads"],
            backpressure_samples=sum(s["backpressure"] for s in samples),
            samples=[{k: v for k, v in s.items() if k != "_at"} for s in samples])
        if os.environ.get("FABTIER_SOAK_KEEP"):  # for a post-mortem of a run that passed
            keep = True
            print(f"logs kept in {workdir}", file=sys.stderr)
    except BaseException:
        keep = True
        print(f"fabtier bench soak failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        stop.set()
        for process in busy:
            process.kill()
            process.wait()
        for feeder in feeders:
            if feeder.pub.poll() is None:
                feeder.pub.kill()
                feeder.pub.wait()
        instance.stop()
        broker.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


HEADER = (f"{'t s':>6} {'RSS MiB':>8} {'anon':>6} {'seal ch.':>8} {'ch. RSS':>8} {'ch. own':>8} {'files':>6} "
          f"{'threads':>7} {'readings/s':>11} {'unsealed':>11} {'inbox':>6} bp")


def row_text(s: dict) -> str:
    return (f"{s['t']:>6.0f} {s['rss_mib']:>8} {s['anon_mib']:>6} {s['seal_children']:>8} "
            f"{s['children_rss_mib']:>8} {s['children_private_mib']:>8} {s['open_files']:>6} {s['threads']:>7} {s['readings_per_s']:>11,} "
            f"{s['unsealed_rows']:>11,} {s['inbox']:>6} {'*' if s['backpressure'] else ''}")


def report(result: dict) -> str:
    lines = [f"fabtier bench soak: {result['minutes']:g} min, {result['feeders']} feeders x {result['sensors']} sensors, "
             f"offered {result['offered_readings_per_s']:,} readings/s; [hot] memory_budget "
             f"{result['hot_budget'] // MIB} MiB, [ingest] max_unsealed {result['max_unsealed'] // MIB} MiB"
             + (f"; beside {result['busy']} busy process(es) at normal priority" if result["busy"] else ""),
             HEADER]
    lines += [row_text(s) for s in result["samples"]]
    lines += [
        f"  stored {result['readings']:,} readings at {result['readings_per_s']:,}/s (the last acknowledged "
        f"{result['drain_after_feeders_s']:.1f} s after the feeders stopped)",
        f"  peak RSS {result['peak_rss_mib']:,} MiB (seal children {result['peak_children_rss_mib']:,} MiB, "
        f"of it their own {result['peak_children_private_mib']:,} MiB); "
        f"bound {result['bound_mib']:,} MiB = budgets + idle {result['idle_rss_mib']} MiB + overhead "
        f"{result['overhead_mib']} MiB: {'within' if result['within_bound'] else 'OVER'}",
        f"  open files {result['open_files_start']} -> {result['open_files_end']}, threads "
        f"{result['threads_start']} -> {result['threads_end']}",
        f"  instance log: {', '.join(f'{k} {v}' for k, v in result['log'].items())}",
        f"  stored {result['stored']:,}, lost {result['lost']}, duplicates {result['duplicates']}",
    ]
    return "\n".join(lines)


def main(*, minutes: float, rate: float, feeders: int, sensors: int, hot_budget: int, max_unsealed: int,
         busy: int, as_json: bool) -> int:
    bench = SoakBench(minutes=minutes, rate=rate, feeders=feeders, sensors=sensors, hot_budget=hot_budget,
                      max_unsealed=max_unsealed, busy=busy)
    print(HEADER, flush=True)  # the rows as they come: a soak is long
    result = run(bench, echo=lambda s: print(row_text(s), flush=True))
    print(report(result), flush=True)
    if as_json:
        print(json.dumps(result))
    return 0
