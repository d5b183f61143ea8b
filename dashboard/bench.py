"""`fabtier bench dashboard`: what the dashboard costs the instance, and how fast it is.

A local mosquitto, an instance (`fabtier run`) and the simulator (`fabtier simulate`) at the
chosen load, each its own process. Two phases of `--seconds` each, under the same load:

1. without the dashboard (the baseline): ingest rate (readings stored per second, from the
   instance's /metrics), the instance's CPU, and `/series` over HTTP, p50 and p99;
2. with the dashboard (`fabtier dashboard`, its own process) and K clients each streaming the
   machine page of one machine of `--sensors` sensors (server-sent events, as a browser does),
   plus one client on the alert stream: the same figures, the updates each client got per
   second, and the delay from the publish of an excursion (one a second, on a sensor of its
   own) to its arrival on the alert stream (p50, p99, max, missed).

With `--json`, one JSON object as the last line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt

from core.errors import FabtierError
from fabtier.bench.harness import InstanceProcess, process_cpu_seconds
from fabtier.broker import LocalBroker, free_port

PROBE_MACHINE = "bench-dash"


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class SeriesProbe:
    """GET /series of one sensor every 50 ms in a thread; answer times in ms."""

    def __init__(self, url: str, machine: str, sensor: str) -> None:
        self.url = f"{url}/series?machine={machine}&sensor={sensor}&minutes=5&points=300"
        self.took: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    response.read()
                self.took.append((time.perf_counter() - began) * 1000)
            except OSError:
                pass
            self._stop.wait(0.05)

    def __enter__(self) -> SeriesProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class StreamClients:
    """K clients of a machine's event stream and one of the alert stream, on an event loop
    in a thread of their own."""

    def __init__(self, url: str, machine: str, clients: int) -> None:
        self.url, self.machine, self.clients = url, machine, clients
        self.updates = [0] * clients
        self.alerts: dict[int, float] = {}  # probe -> perf_counter at arrival
        self.ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: list[concurrent.futures.Future] = []

    async def _stream(self, path: str, on_event) -> None:
        async with httpx.AsyncClient(timeout=None) as client, client.stream("GET", self.url + path) as response:
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    on_event(event, line[6:])

    def _machine_event(self, index: int):
        def take(event: str, data: str) -> None:
            if event in ("snapshot", "update"):
                self.updates[index] += 1
        return take

    def _alert_event(self, event: str, data: str) -> None:
        if event == "alerts":
            self.ready.set()
        if event != "alert":
            return
        alert = orjson.loads(data)
        if alert.get("machine") == PROBE_MACHINE and alert.get("state") == "raised":
            self.alerts.setdefault(int(str(alert["sensor"]).rsplit("/", 1)[-1]), time.perf_counter())

    def __enter__(self) -> StreamClients:
        self._thread.start()
        self._tasks.append(asyncio.run_coroutine_threadsafe(self._stream("/events/alerts", self._alert_event),
                                                            self._loop))
        for i in range(self.clients):
            self._tasks.append(asyncio.run_coroutine_threadsafe(
                self._stream(f"/events/machine/{self.machine}", self._machine_event(i)), self._loop))
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def _phase(instance: InstanceProcess, seconds: float, machine: str, sensor: str) -> dict:
    before, cpu0, t0 = instance.metrics()["readings_stored"], instance.cpu_seconds(), time.monotonic()
    with SeriesProbe(instance.url, machine, sensor) as probe:
        time.sleep(seconds)
    took = time.monotonic() - t0
    stored = instance.metrics()["readings_stored"] - before
    return {"ingest_rate": round(stored / took), "instance_cpu_s": round(instance.cpu_seconds() - cpu0, 2),
            "series_p50_ms": _pct(probe.took, 0.5), "series_p99_ms": _pct(probe.took, 0.99),
            "series_requests": len(probe.took)}


def measure(*, seconds: float, machines: int, sensors: int, rate_hz: float, clients: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="fabtier-bench-dashboard-"))
    broker = LocalBroker(workdir / "broker").start()
    instance = InstanceProcess(workdir, broker_url=broker.url, extra_toml=(
        '[cold]\nseal_every = "10s"\n'
        f'[[alerts.rules]]\nname = "bench-probe"\nsensor = "{PROBE_MACHINE}/*"\nhigh = 100.0\n'))
    simulator = dashboard = None
    injector = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="bench-dash-injector")
    try:
        instance.start()
        simulator = subprocess.Popen(
            [sys.executable, "-m", "fabtier.cli", "simulate", "--broker", broker.url, "--machines", str(machines),
             "--sensors", str(sensors), "--rate-hz", str(rate_hz), "--batch", str(max(1, sensors * 2))],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "simulator.log", "wb"))
        time.sleep(3)  # the simulator connected and every machine has published
        machine, sensor = "etch-01", "ch1/temp"
        without = _phase(instance, seconds, machine, sensor)

        port = free_port()
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "fabtier.cli", "dashboard", "--config", str(instance.config), "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "dashboard.log", "wb"))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/login", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or dashboard.poll() is not None:
                    raise FabtierError(f"the dashboard did not start; see {workdir / 'dashboard.log'}") from None
                time.sleep(0.1)
        injector.connect("127.0.0.1", broker.port)
        injector.loop_start()
        with StreamClients(url, machine, clients) as streams:
            streams.ready.wait(10)
            time.sleep(2)  # the machine feed's first (whole window) answer is behind us
            updates0 = list(streams.updates)
            cpu0 = process_cpu_seconds(dashboard.pid)
            sent: dict[int, float] = {}
            stop = threading.Event()

            def inject() -> None:
                probe = 0
                while not stop.is_set():
                    now_ms = int(time.time() * 1000)
                    topic = f"fab/{PROBE_MACHINE}/probe/{probe}"
                    sent[probe] = time.perf_counter()
                    injector.publish(topic, orjson.dumps({"ts": now_ms, "v": 1000.0}), qos=1)
                    injector.publish(topic, orjson.dumps({"ts": now_ms + 1, "v": 0.0}), qos=1)
                    probe += 1
                    stop.wait(1.0)
            injecting = threading.Thread(target=inject, daemon=True)
            injecting.start()
            with_dashboard = _phase(instance, seconds, machine, sensor)
            stop.set()
            injecting.join()
            time.sleep(2)  # the last probes' alerts
            delays = [(streams.alerts[p] - t) * 1000 for p, t in sent.items() if p in streams.alerts]
            per_client = [(u - u0) / seconds for u, u0 in zip(streams.updates, updates0, strict=True)]
            with_dashboard.update({
                "dashboard_cpu_s": round(process_cpu_seconds(dashboard.pid) - cpu0, 2),
                "updates_per_client_per_s": round(sum(per_client) / max(1, len(per_client)), 2),
                "alert_to_stream_p50_ms": _pct(delays, 0.5), "alert_to_stream_p99_ms": _pct(delays, 0.99),
                "alert_to_stream_max_ms": round(max(delays), 2) if delays else None,
                "alerts_sent": len(sent), "alerts_missed": len(sent) - len(delays)})
        return {"bench": "dashboard", "seconds": seconds, "machines": machines, "sensors": sensors,
                "rate_hz": rate_hz, "clients": clients, "offered_rate": machines * sensors * rate_hz,
                "without_dashboard": without, "with_dashboard": with_dashboard,
                "ingest_ratio": round(with_dashboard["ingest_rate"] / without["ingest_rate"], 3)
                if without["ingest_rate"] else None}
    finally:
        injector.loop_stop()
        for process in (dashboard, simulator):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        instance.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(result: dict) -> str:
    a, b = result["without_dashboard"], result["with_dashboard"]
    return "\n".join([
        f"bench dashboard: {result['machines']} machines x {result['sensors']} sensors at {result['rate_hz']:g} Hz "
        f"({result['offered_rate']:,.0f} readings/s offered), {result['clients']} clients on one machine's page, "
        f"{result['seconds']:g} s per phase",
        f"  ingest rate   without {a['ingest_rate']:,}/s   with {b['ingest_rate']:,}/s   (ratio {result['ingest_ratio']})",
        f"  instance CPU  without {a['instance_cpu_s']} s   with {b['instance_cpu_s']} s; dashboard CPU "
        f"{b['dashboard_cpu_s']} s",
        f"  /series       without p50 {a['series_p50_ms']} ms p99 {a['series_p99_ms']} ms   "
        f"with p50 {b['series_p50_ms']} ms p99 {b['series_p99_ms']} ms",
        f"  machine page  {b['updates_per_client_per_s']} updates per client per second",
        f"  alert publish to stream  p50 {b['alert_to_stream_p50_ms']} ms  p99 {b['alert_to_stream_p99_ms']} ms  "
        f"max {b['alert_to_stream_max_ms']} ms  ({b['alerts_missed']} of {b['alerts_sent']} missed)",
    ])


def run(*, seconds: float | None, machines: int | None, sensors: int | None, rate_hz: float | None,
        clients: int, as_json: bool) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    result = measure(seconds=seconds or 10.0, machines=machines or 10, sensors=sensors or 50,
                     rate_hz=rate_hz or 50.0, clients=clients)
    print(report(result), flush=True)
    if as_json:
        print(json.dumps(result), flush=True)
    return 0
