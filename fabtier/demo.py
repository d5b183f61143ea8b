"""`fabtier demo`: the embedded default on one machine — a local mosquitto, the simulator, a
full instance and the operators' dashboard (a process of its own), with everything under one
data directory. The simulator's recipes are loaded as recipe master data and a few rules are
set, and the simulator injects excursions often, so that alerts are raised and cleared on the
dashboard within the first minute."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.brokerconn import broker_tls
from fabtier.broker import LocalBroker, free_port
from fabtier.config import load_settings
from fabtier.runner import Instance, install_stop_signals, wait_until_stopped

# Excursions per sensor and hour in the demo (the simulator's default is 4): with the default
# 6 machines of 8 sensors, several a minute (about half are ramps long enough to raise).
DEMO_EXCURSION_RATE = 30.0


def _write_config(path: Path, *, data_dir: Path, broker_url: str, api_port: int, dashboard_port: int,
                  recipes: Path) -> None:
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
        f"dashboard_port = {dashboard_port}\n"
        "[alerts]\n"
        f'recipes = "{recipes}"\n'
        "flap_max = 5\n"
        'flap_window = "1m"\n'
        "[[alerts.rules]]\n"
        'name = "chamber-overtemp"\n'
        'sensor = "*/ch*/temp"\n'
        "high = 80.0\n"
        + "".join(
            # Recipe limits on the fast sensors; the chamber temperatures lag for tens of seconds
            # after a step change (simulator/catalog.py), the fixed limit above watches them.
            # `for` 2.5 s: the simulator stretches each step by up to 3 %, so a step may end a
            # second before the recipe's does; a real excursion (a ramp) lasts longer.
            "[[alerts.rules]]\n"
            f'name = "recipe-{name}"\n'
            f'sensor = "{pattern}"\n'
            "recipe = true\n"
            'for = "2.5s"\n'
            "hysteresis = 0.3\n"
            for name, pattern in (("pressure", "*/ch*/pressure"), ("rf", "*/rf/forward_power"), ("gas", "*/gas/*"))),
        encoding="utf-8",
    )


def recipes_toml() -> str:
    """The simulator's recipes (simulator/catalog.py) as recipe master data: one version each,
    in effect since 2020, with each step's limits from its setpoints and tolerances. A step's
    settle is long enough for the slowest sensor it sets (first-order lag: three time
    constants) to reach its new setpoint, and leaves the step's last part judged."""
    from simulator.catalog import MACHINE_KINDS

    lines = ["# Written by `fabtier demo`: the simulator's recipes as recipe master data.", ""]
    for kind in MACHINE_KINDS:
        taus = {k.quantity: k.tau_s for k in kind.sensors}
        idle = {k.quantity: k.idle for k in kind.sensors}
        for recipe in kind.recipes:
            lines += ["[[recipes]]", f'name = "{recipe.name}"', 'version = "1"',
                      'effective = "2020-01-01T00:00:00Z"', ""]
            before = dict(idle)
            for step in recipe.steps:
                moved = [q for q, (sp, tol) in step.setpoints.items() if abs(before.get(q, (sp, 0))[0] - sp) > tol]
                settle = max(1.0, 3 * max((taus.get(q, 1.0) for q in moved), default=0.0))
                settle = min(settle, round(step.seconds * 0.6, 1))
                limits = ", ".join(f'"{q}" = [{sp:g}, {tol:g}]' for q, (sp, tol) in step.setpoints.items())
                lines += ["[[recipes.steps]]", f'name = "{step.name}"', f'duration = "{step.seconds:g}s"',
                          f'settle = "{settle:g}s"', f"limits = {{ {limits} }}", ""]
                before = {**idle, **step.setpoints}
    return "\n".join(lines)


def _dashboard_port(api_port: int) -> int:
    """8090 beside the API's default 8080 (the API's port + 10) when free, else any free port."""
    if api_port == 0:
        return free_port()
    wanted = api_port + 10 if api_port + 10 < 65536 else 0
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", wanted))
        except OSError:
            return free_port()
    return wanted


def _fabtier_command() -> list[str]:
    """How to run the `fabtier` of this installation (the console script beside this Python)."""
    script = Path(sys.executable).parent / "fabtier"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fabtier.cli"]


def _start_dashboard(config_path: Path, port: int) -> subprocess.Popen | None:
    """The dashboard as a process of its own, so that it never takes the ingest process's time."""
    try:
        return subprocess.Popen([*_fabtier_command(), "dashboard", "--config", str(config_path), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"fabtier demo: the dashboard did not start ({exc})", file=sys.stderr, flush=True)
        return None


def _stop_dashboard(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_demo(*, data_dir: Path, seconds: float | None, port: int, machines: int, sensors: int,
             rate_hz: float, seed: int) -> int:
    from simulator import run_simulator

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    install_stop_signals(stop)
    broker = LocalBroker(data_dir / "broker").start()
    config_path = data_dir / "fabtier.toml"
    recipes_path = data_dir / "recipes.toml"
    recipes_path.write_text(recipes_toml(), encoding="utf-8")
    dashboard_port = _dashboard_port(port)
    _write_config(config_path, data_dir=data_dir, broker_url=broker.url, api_port=port or free_port(),
                  dashboard_port=dashboard_port, recipes=recipes_path)
    settings = load_settings(config_path)
    instance = None
    dashboard = _start_dashboard(config_path, dashboard_port)
    try:
        instance = Instance(settings).start(stop=stop)
        if not instance.pipeline.ready:  # stopped (Ctrl-C) before the broker took the subscription
            return 0
        if dashboard is not None and dashboard.poll() is None:
            print(f"fabtier demo: dashboard http://127.0.0.1:{dashboard_port}/", flush=True)
        print(f"  broker {broker.url}, API {instance.api_url}, data in {data_dir}", flush=True)
        print("  health:   curl " + instance.api_url + "/health", flush=True)
        print("  metrics:  curl " + instance.api_url + "/metrics", flush=True)
        sql = shlex.join([*_fabtier_command(), "sql", "--config", str(config_path)])
        print(f'  SQL:      {sql} "SELECT machine, count(*) AS n FROM readings GROUP BY machine ORDER BY machine"',
              flush=True)
        print(f'  alerts:   {sql} "SELECT raised_at, machine, sensor, rule, state, value FROM alerts '
              'ORDER BY raised_at DESC LIMIT 10"', flush=True)
        print(f"  lake:     {settings.store_url}  (Parquet, sealed every 10 s)", flush=True)
        stats_box: dict = {}
        sim_stop = threading.Event()

        def simulate() -> None:
            # The instance's own broker settings (FABTIER_BROKER_* may point both at another broker).
            login = settings.broker
            stats_box["stats"] = run_simulator(
                broker_url=login.url, username=login.username or None, password=login.password.reveal() or None,
                tls=broker_tls(login), machines=machines, sensors=sensors, rate_hz=rate_hz,
                batch=max(1, sensors * 2), seed=seed, stop=sim_stop, excursion_rate=DEMO_EXCURSION_RATE)

        sim_thread = threading.Thread(target=simulate, name="simulator", daemon=True)
        sim_thread.start()
        wait_until_stopped(instance, stop, seconds)
        _stop_dashboard(dashboard)
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
        print(f"  the data stays in {data_dir}; query it with: {sql} "
              '"SELECT count(*) FROM readings"', flush=True)
        return 0
    finally:
        _stop_dashboard(dashboard)
        if instance is not None:
            instance.stop()
        broker.stop()


def _drain(instance: Instance, expected_messages: int, timeout: float = 30.0) -> None:
    """Wait until the pipeline has taken every message the simulator had acknowledged."""
    deadline = time.monotonic() + timeout
    while instance.pipeline.metrics.messages < expected_messages and time.monotonic() < deadline:
        time.sleep(0.05)
