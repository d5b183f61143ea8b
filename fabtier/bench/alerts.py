"""`fabtier bench alerts`: how fast an excursion becomes an alert at a subscriber, under load.

Two parts, both printed, and with `--json` one JSON object as the last line:

1. Engine cost (micro-benchmark, in this process): nanoseconds per reading that rule
   evaluation adds to the ingest path, for fixed-threshold rules and for recipe limits, at
   several batch sizes; the baseline, measured on the same batches, is the payload decode
   that every reading pays anyway.
2. End to end: a local mosquitto, a fabtier instance (`fabtier run`, its own process) and
   the simulator (`fabtier simulate`, its own process) at the chosen rate; meanwhile an
   independent publisher injects excursions on sensors of their own, and an independent
   subscriber times each one from the publisher's send to the alert's arrival: p50, p99,
   max, and missed (alerts that never came) and repeated (alerts that came twice). The
   baseline is the broker's own hop, measured in the same run: the same subscriber also
   receives the injected reading itself. The instance seals every 10 s by default
   (`--seal-every`), so that a seal, which stalls ingest for a moment, falls in the window.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt

from core.errors import FabtierError, UserError
from fabtier.broker import LocalBroker, free_port

INJECT_MACHINE = "bench-inj"


# ---- 1. engine cost -------------------------------------------------------------------------
def engine_cost(batches: tuple[int, ...] = (100, 1000, 10_000)) -> list[dict]:
    """ns per reading: fixed rules, recipe rules, and decoding the same batch (the baseline)."""
    from alerts.engine import AlertEngine
    from alerts.lotcontext import LotContext
    from alerts.recipes import parse_book
    from core.settings import AlertRule
    from ingest.codec import ContextEvent, Limits, decode_readings
    from tiers.keys import SensorKeys

    now = int(time.time() * 1000)
    kinds = ["temp", "pressure", "rf/forward_power", "gas/ar_flow", "stage/vibration"]
    names = [f"ch{i // 5 + 1}/{kinds[i % 5]}" if i % 5 < 2 else f"{kinds[i % 5]}{i // 5}" for i in range(50)]
    book = parse_book({"recipes": [{"name": "R", "version": "1", "effective": 0, "steps": [
        {"name": "a", "duration": "1h", "limits": {"temp": [40, 30], "pressure": [40, 30]}}]}]})
    rules = {
        "fixed": [AlertRule(name="overtemp", sensor="*/ch*/temp", high=80.0, low=10.0, hysteresis=1.0),
                  AlertRule(name="overpressure", sensor="*/ch*/pressure", high=900.0)],
        "recipe": [AlertRule(name="window", sensor="*", recipe=True, hysteresis=0.1)],
    }
    results = []
    for batch in batches:
        rng = np.random.default_rng(batch)
        payload = orjson.dumps({"ts": list(range(now - batch, now)), "sensor": [names[i % 50] for i in range(batch)],
                                "v": rng.uniform(20, 60, batch).round(2).tolist()})
        limits = Limits(max_future_ms=10**9, max_late_ms=10**12, max_payload=1 << 30)
        number = max(5, 50_000 // batch)

        def per_reading(fn: Callable[[], object], number: int = number, batch: int = batch) -> float:
            return min(timeit.repeat(fn, number=number, repeat=5)) / number / batch * 1e9

        row = {"batch": batch, "decode_ns": per_reading(
            partial(decode_readings, "fab/m", payload, root="fab", now_ms=now, limits=limits))}
        decoded = decode_readings("fab/m", payload, root="fab", now_ms=now, limits=limits)
        for label, rule_set in rules.items():
            keys, lots = SensorKeys(), LotContext()
            lots.add(ContextEvent(now - 10_000, "m", "start", "L1", "W01", "R", "1"))
            engine = AlertEngine(rule_set, keys=keys, lots=lots, book=book)
            key_ids = keys.ids_for("m", decoded.sensor_names, decoded.sensor_codes)
            row[f"{label}_ns"] = per_reading(partial(engine.evaluate, "m", key_ids, decoded.ts, decoded.value, now))
        results.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
    return results


# ---- 2. end to end ---------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": _percentile(values, 50), "p99_ms": _percentile(values, 99),
            "max_ms": round(max(values), 2) if values else None}


def _write_config(path: Path, *, data_dir: Path, broker_url: str, api_port: int, seal_every: str) -> None:
    path.write_text(
        f'data_dir = "{data_dir}"\n'
        f'[broker]\nurl = "{broker_url}"\nclient_id = "fabtier-bench-alerts"\n'
        f"[api]\nport = {api_port}\n"
        f'[cold]\nseal_every = "{seal_every}"\n'
        "[alerts]\nflap_max = 0\n"
        # The simulator's own excursions raise these, as they would in a fab.
        '[[alerts.rules]]\nname = "chamber-overtemp"\nsensor = "*/ch*/temp"\nhigh = 80.0\nlow = 10.0\nhysteresis = 1.0\n'
        f'[[alerts.rules]]\nname = "bench-probe"\nsensor = "{INJECT_MACHINE}/*"\nhigh = 100.0\n',
        encoding="utf-8")


def _api_json(port: int, path: str) -> dict:
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return {}


def _client(name: str) -> mqtt.Client:
    return mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                       client_id=f"bench-{name}-{os.getpid()}", protocol=mqtt.MQTTv311, clean_session=True)


def end_to_end(*, seconds: float, machines: int, sensors: int, rate_hz: float, batch: int,
               excursions_per_s: float, seal_every: str = "10s") -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="fabtier-bench-alerts-"))
    broker = LocalBroker(workdir / "broker").start()
    api_port = free_port()
    config = workdir / "fabtier.toml"
    _write_config(config, data_dir=workdir / "data", broker_url=broker.url, api_port=api_port,
                  seal_every=seal_every)
    instance = simulator = None
    receiver = injector = None
    try:
        instance = subprocess.Popen([sys.executable, "-m", "fabtier.cli", "run", "--config", str(config)],
                                    stdout=subprocess.DEVNULL, stderr=open(workdir / "fabtier.log", "wb"))
        deadline = time.monotonic() + 60
        while _api_json(api_port, "/health").get("state") != "ready":
            if instance.poll() is not None or time.monotonic() > deadline:
                raise FabtierError(f"the fabtier instance did not start; see {workdir / 'fabtier.log'}")
            time.sleep(0.1)

        sent: dict[int, float] = {}
        sent_wall: dict[int, float] = {}
        decided: dict[int, int] = {}  # the pipeline's raised_at (epoch ms) per probe
        alerts: dict[int, list[float]] = {}
        cleared: dict[int, float] = {}
        hops: dict[int, float] = {}
        lock = threading.Lock()
        subscribed = threading.Event()

        def on_message(_c, _u, message) -> None:
            arrived = time.perf_counter()
            parts = message.topic.split("/")
            probe = int(parts[-1])
            with lock:
                if parts[0] == "fab-alerts":
                    payload = orjson.loads(message.payload)
                    if payload["state"] == "raised":
                        alerts.setdefault(probe, []).append(arrived)
                        decided.setdefault(probe, payload["raised_at"])
                    else:
                        cleared.setdefault(probe, arrived)
                elif orjson.loads(message.payload)["v"] > 100:
                    hops.setdefault(probe, arrived)

        receiver = _client("subscriber")
        receiver.on_message = on_message
        receiver.on_subscribe = lambda *a: subscribed.set()
        receiver.connect("127.0.0.1", broker.port)
        receiver.subscribe([(f"fab-alerts/{INJECT_MACHINE}/#", 1), (f"fab/{INJECT_MACHINE}/#", 1)])
        receiver.loop_start()
        injector = _client("publisher")
        injector.connect("127.0.0.1", broker.port)
        injector.loop_start()
        if not subscribed.wait(10):
            raise FabtierError("the bench subscriber could not subscribe")

        warmup = 2.0
        simulator = subprocess.Popen(
            [sys.executable, "-m", "fabtier.cli", "simulate", "--broker", broker.url, "--machines", str(machines),
             "--sensors", str(sensors), "--rate-hz", str(rate_hz), "--batch", str(batch),
             "--seconds", str(seconds + warmup)],
            stdout=subprocess.PIPE, stderr=open(workdir / "simulator.log", "wb"), text=True)
        time.sleep(warmup)
        before = _api_json(api_port, "/metrics")
        began = time.monotonic()
        period = 1.0 / excursions_per_s
        probe = 0
        while time.monotonic() - began < seconds:
            now_ms = int(time.time() * 1000)
            topic = f"fab/{INJECT_MACHINE}/probe/{probe}"
            sent[probe] = time.perf_counter()
            sent_wall[probe] = time.time_ns() / 1e6
            injector.publish(topic, orjson.dumps({"ts": now_ms, "v": 1000.0}), qos=1)
            injector.publish(topic, orjson.dumps({"ts": now_ms + 1, "v": 0.0}), qos=1)
            probe += 1
            time.sleep(max(0.0, began + probe * period - time.monotonic()))
        elapsed = time.monotonic() - began
        after = _api_json(api_port, "/metrics")
        out, _ = simulator.communicate(timeout=120)
        sim = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        wait_until = time.monotonic() + 10
        while time.monotonic() < wait_until:
            with lock:
                if len(alerts) >= len(sent) and len(cleared) >= len(sent):
                    break
            time.sleep(0.05)
        with lock:
            raise_ms = [(alerts[p][0] - sent[p]) * 1000 for p in sent if p in alerts]
            clear_ms = [(cleared[p] - sent[p]) * 1000 for p in sent if p in cleared]
            hop_ms = [(hops[p] - sent[p]) * 1000 for p in sent if p in hops]
            # Wall clock against the pipeline's wall clock (same machine): where the time goes.
            decide_ms = [decided[p] - sent_wall[p] for p in sent if p in decided]
            missed = sum(1 for p in sent if p not in alerts)
            repeated = sum(len(v) - 1 for v in alerts.values())
        stored = after.get("readings_stored", 0) - before.get("readings_stored", 0)
        inside = _api_json(api_port, "/metrics").get("alerts", {})
        return {
            "injected": len(sent), "missed": missed, "repeated": repeated,
            "raised": _summary(raise_ms), "cleared": _summary(clear_ms), "broker_hop_baseline": _summary(hop_ms),
            "decided": _summary(decide_ms),
            # Measured inside fabtier over its last 1,000 alerts (the injected ones, mostly).
            "decided_to_durable_ms": inside.get("decided_to_durable_ms"),
            "decided_to_mqtt_delivered_ms": inside.get("sinks", {}).get("mqtt", {}).get("decided_to_delivered_ms"),
            "seconds": round(elapsed, 2), "simulator": sim,
            "ingest_readings_per_s": round(stored / elapsed) if elapsed else 0,
            "config": {"machines": machines, "sensors": sensors, "rate_hz": rate_hz, "batch": batch,
                       "offered_readings_per_s": round(machines * sensors * rate_hz),
                       "excursions_per_s": excursions_per_s, "seal_every": seal_every},
            "pipeline_alerts": after.get("alerts", {}).get("raised"),
        }
    finally:
        for client in (injector, receiver):
            if client is not None:
                client.disconnect()
                client.loop_stop()
        if simulator is not None and simulator.poll() is None:
            simulator.kill()
            simulator.wait()
        if instance is not None and instance.poll() is None:
            instance.send_signal(signal.SIGTERM)
            try:
                instance.wait(timeout=60)
            except subprocess.TimeoutExpired:
                instance.kill()
                instance.wait()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run(*, seconds: float, machines: int, sensors: int, rate_hz: float, batch: int,
        excursions_per_s: float, seal_every: str, as_json: bool) -> int:
    if seconds <= 0 or excursions_per_s <= 0 or machines < 1 or sensors < 1 or rate_hz <= 0 or batch < 1:
        raise UserError("--seconds, --excursions-per-s, --machines, --sensors, --rate-hz and --batch must be positive")
    micro = engine_cost()
    print("engine cost per reading (ns): batch  decode(baseline)  fixed-rules  recipe-limits")
    for row in micro:
        print(f"  {row['batch']:>6}  {row['decode_ns']:>10}  {row['fixed_ns']:>10}  {row['recipe_ns']:>10}")
    from core.units import parse_duration
    try:
        parse_duration(seal_every)
    except ValueError:
        raise UserError(f"--seal-every {seal_every!r} is not a duration; write e.g. 10s") from None
    e2e = end_to_end(seconds=seconds, machines=machines, sensors=sensors, rate_hz=rate_hz, batch=batch,
                     excursions_per_s=excursions_per_s, seal_every=seal_every)
    r, c, hop = e2e["raised"], e2e["cleared"], e2e["broker_hop_baseline"]
    print(f"load: offered {e2e['config']['offered_readings_per_s']} readings/s, simulator published "
          f"{e2e['simulator'].get('readings_per_s')}/s, fabtier stored {e2e['ingest_readings_per_s']}/s")
    print(f"injected {e2e['injected']} excursions: missed {e2e['missed']}, repeated {e2e['repeated']}")
    print(f"publish -> raised alert at subscriber: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms")
    print(f"publish -> cleared alert:              p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, max {c['max_ms']} ms")
    d = e2e["decided"]
    print(f"  of which publish -> decision in fabtier (raised_at): p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms, "
          f"max {d['max_ms']} ms")
    for label, key in (("decision -> in the fsynced log", "decided_to_durable_ms"),
                       ("decision -> MQTT sink acknowledged", "decided_to_mqtt_delivered_ms")):
        m = e2e.get(key) or {}
        print(f"  inside fabtier, {label}: p50 {m.get('p50')} ms, p99 {m.get('p99')} ms, max {m.get('max')} ms")
    print(f"baseline, publish -> reading at subscriber (broker hop): p50 {hop['p50_ms']} ms, "
          f"p99 {hop['p99_ms']} ms, max {hop['max_ms']} ms")
    if as_json:
        print(json.dumps({"bench": "alerts", "engine_ns_per_reading": micro, **e2e}))
    return 0 if e2e["missed"] == 0 else 1
