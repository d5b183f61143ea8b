"""`fabtier demo`: the embedded default on one machine — a local mosquitto, the simulator and
a full instance, with everything under one data directory."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from core.brokerconn import broker_tls
from fabtier.broker import LocalBroker, free_port
from fabtier.config import load_settings
from fabtier.runner import Instance, install_stop_signals, wait_until_stopped


def _write_config(path: Path, *, data_dir: Path, broker_url: str, api_port: int) -> None:
    path.write_text(
        "# Written by `fabtier demo`: the settings of the demo instance.\n"
        f'data_dir = "{data_dir}"\n'
        "[broker]\n"
        f'url = "{broker_url}"\n'
        'client_id = "fabtier-demo"\n'
        "[cold]\n"
        'seal_every = "10s"\n'
        "[api]\n"
        f"port = {api_port}\n"
        "[[alerts.rules]]\n"
        'name = "chamber-overtemp"\n'
        'sensor = "*/ch*/temp"\n'
        "high = 80.0\n",
        encoding="utf-8",
    )


def run_demo(*, data_dir: Path, seconds: float | None, port: int, machines: int, sensors: int,
             rate_hz: float, seed: int) -> int:
    from simulator import run_simulator

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    install_stop_signals(stop)
    broker = LocalBroker(data_dir / "broker").start()
    config_path = data_dir / "fabtier.toml"
    _write_config(config_path, data_dir=data_dir, broker_url=broker.url, api_port=port or free_port())
    settings = load_settings(config_path)
    instance = None
    try:
        instance = Instance(settings).start(stop=stop)
        if not instance.pipeline.ready:  # stopped (Ctrl-C) before the broker took the subscription
            return 0
        print(f"fabtier demo: broker {broker.url}, API {instance.api_url}, data in {data_dir}", flush=True)
        print("  health:   curl " + instance.api_url + "/health", flush=True)
        print("  metrics:  curl " + instance.api_url + "/metrics", flush=True)
        print(f'  SQL:      fabtier sql --config {config_path} '
              '"SELECT machine, count(*) AS n FROM readings GROUP BY machine ORDER BY machine"', flush=True)
        print(f"  lake:     {settings.store_url}  (Parquet, sealed every 10 s)", flush=True)
        stats_box: dict = {}
        sim_stop = threading.Event()

        def simulate() -> None:
            # The instance's own broker settings (FABTIER_BROKER_* may point both at another broker).
            login = settings.broker
            stats_box["stats"] = run_simulator(
                broker_url=login.url, username=login.username or None, password=login.password.reveal() or None,
                tls=broker_tls(login), machines=machines, sensors=sensors, rate_hz=rate_hz,
                batch=max(1, sensors * 2), seed=seed, stop=sim_stop)

        sim_thread = threading.Thread(target=simulate, name="simulator", daemon=True)
        sim_thread.start()
        wait_until_stopped(instance, stop, seconds)
        sim_stop.set()
        sim_thread.join()
        stats = stats_box.get("stats")
        if stats is not None:
            _drain(instance, stats.messages)  # context messages are counted in it
        instance.stop()
        metrics = instance.pipeline.metrics
        published = stats.readings if stats else 0
        print(f"fabtier demo stopped: published {published} readings, stored {metrics.readings_stored}, "
              f"quarantined {metrics.quarantined}, sealed {metrics.rows_sealed} into the lake", flush=True)
        print(f"  the data stays in {data_dir}; query it with: fabtier sql --config {config_path} "
              '"SELECT count(*) FROM readings"', flush=True)
        return 0
    finally:
        if instance is not None:
            instance.stop()
        broker.stop()


def _drain(instance: Instance, expected_messages: int, timeout: float = 30.0) -> None:
    """Wait until the pipeline has taken every message the simulator had acknowledged."""
    deadline = time.monotonic() + timeout
    while instance.pipeline.metrics.messages < expected_messages and time.monotonic() < deadline:
        time.sleep(0.05)
