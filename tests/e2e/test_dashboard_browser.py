"""The operators' dashboard in a real browser (Debian's chromium, driven by Playwright) against
a running instance, a running dashboard, a real broker and the simulator: pages load from the
dashboard alone, charts move without a reload, an excursion reaches the alert list within two
seconds of its publish, an acknowledgement survives a restart of both processes; frame times
with 200 sensors on screen are measured and printed (not asserted).

Screenshots go to tests/artifacts/dashboard/ (gitignored); the test output names them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fabtier.broker import LocalBroker, free_port
from fabtier.config import load_settings
from tests.conftest import start_fabtier_run, wait_for, wait_ready

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
TOKEN = "dashboard-test-token"

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="chromium is not installed at /usr/bin/chromium (scripts/setup.sh installs "
                              "Debian's chromium; CI runs it)"),
]


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    return sync_playwright


def _uplot_installed() -> None:
    from dashboard.app import uplot_dir
    if uplot_dir() is None:
        pytest.fail("uPlot is not installed: run scripts/setup.sh (npm install --prefix .dashboard-vendor uplot@1)")


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class Stack:
    """An instance (`fabtier run`), the dashboard (`fabtier dashboard`) and the simulator, as
    processes an operator starts; each can be stopped and started again on the same ports."""

    def __init__(self, broker: LocalBroker, tmp_path: Path, *, token: str = TOKEN) -> None:
        from fabtier.demo import recipes_toml
        self.broker = broker
        self.token = token
        self.config = tmp_path / "fabtier.toml"
        recipes = tmp_path / "recipes.toml"
        recipes.write_text(recipes_toml(), encoding="utf-8")
        self.api_port, self.dash_port = free_port(), free_port()
        self.config.write_text(
            f'data_dir = "{tmp_path / "data"}"\n'
            f'[broker]\nurl = "{broker.url}"\nclient_id = "fabtier-dash-test-{os.getpid()}"\n'
            f'[api]\nport = {self.api_port}\ntoken = "{token}"\n'
            '[cold]\nseal_every = "10s"\n'
            f'[alerts]\nrecipes = "{recipes}"\n'
            '[[alerts.rules]]\nname = "chamber-overtemp"\nsensor = "*/ch*/temp"\nhigh = 80.0\n'
            '[[alerts.rules]]\nname = "recipe-gas"\nsensor = "*/gas/*"\nrecipe = true\nfor = "200ms"\n'
            'hysteresis = 0.3\n', encoding="utf-8")
        self.settings = load_settings(self.config)
        self.url = f"http://127.0.0.1:{self.dash_port}"
        self.instance: subprocess.Popen | None = None
        self.dashboard: subprocess.Popen | None = None
        self._sim_stop = threading.Event()
        self._sim: threading.Thread | None = None

    def start_instance(self) -> None:
        self.instance = start_fabtier_run(self.config)
        wait_ready(self.settings)

    def start_dashboard(self) -> None:
        self.dashboard = subprocess.Popen(
            [sys.executable, "-m", "fabtier.cli", "dashboard", "--config", str(self.config), "--port",
             str(self.dash_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: _get(self.url + "/login") == 200, timeout=30, what="the dashboard to answer")

    def start_simulator(self, machines: int = 3, sensors: int = 6) -> None:
        from simulator import run_simulator

        def run() -> None:
            run_simulator(broker_url=self.broker.url, machines=machines, sensors=sensors, rate_hz=20, batch=12,
                          seed=3, stop=self._sim_stop, excursion_rate=0.0, fault_rate=0.0)
        self._sim = threading.Thread(target=run, name="simulator", daemon=True)
        self._sim.start()

    @staticmethod
    def _stop(process: subprocess.Popen | None) -> str:
        if process is None or process.poll() is not None:
            return ""
        process.terminate()
        try:
            out, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        return out or ""

    def stop_instance(self) -> None:
        self._stop(self.instance)

    def stop_dashboard(self) -> None:
        out = self._stop(self.dashboard)
        assert "Traceback" not in out, out

    def stop(self) -> None:
        self._sim_stop.set()
        if self._sim is not None:
            self._sim.join(timeout=30)
        self.stop_dashboard()
        self.stop_instance()


@pytest.fixture
def stack(broker, tmp_path):
    _uplot_installed()
    running = Stack(broker, tmp_path)
    try:
        running.start_instance()
        running.start_dashboard()
        running.start_simulator()
        yield running
    finally:
        running.stop()


@pytest.fixture
def browser():
    sync_playwright = _playwright()
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def _login(page, stack: Stack, path: str = "/") -> None:
    page.goto(stack.url + path)
    assert page.url.startswith(stack.url + "/login"), page.url
    page.fill("#token", stack.token)
    page.click("button[type=submit]")
    page.wait_for_url(stack.url + path)


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _publisher(broker: LocalBroker):
    import paho.mqtt.client as mqtt
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"dash-test-{time.time()}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def test_pages_load_from_the_dashboard_alone_and_charts_move_without_a_reload(stack, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    # Without the session cookie: pages send to the login, data is refused.
    assert _get(stack.url + "/api/alerts") == 401
    _login(page, stack, "/")
    page.wait_for_selector("#machines tbody tr[data-machine]", timeout=20_000)
    wait_for(lambda: page.locator("#machines tbody tr[data-machine]").count() == 3, timeout=20, what="3 machines")
    row = page.locator("#machines tbody tr[data-machine='etch-01']")
    wait_for(lambda: row.locator("td").nth(2).inner_text() not in ("", "idle"), timeout=30, what="a lot on etch-01")
    _shot(page, "overview")

    page.goto(stack.url + "/machine/etch-01")
    page.wait_for_function("window.fabtierDash && window.fabtierDash.chartData() && "
                           "window.fabtierDash.chartData()[0].length > 2", timeout=20_000)
    first = page.evaluate("window.fabtierDash.chartData('ch1/temp')")
    version = page.evaluate("window.fabtierDash.version()")
    page.wait_for_function(f"window.fabtierDash.version() > {version} + 1", timeout=10_000)
    second = page.evaluate("window.fabtierDash.chartData('ch1/temp')")
    assert second != first, "the chart's data did not change without a reload"
    assert second[0][-1] > first[0][-1], "the newest bucket did not move on"
    bands = [(lo, hi, mean) for lo, hi, mean in zip(second[1], second[2], second[3], strict=True) if mean is not None]
    assert bands and all(lo <= mean <= hi for lo, hi, mean in bands), "a mean outside its min-max band"
    # The recipe limits of the running step, where the step has settled (ETCH recipes set temp).
    page.wait_for_function("window.fabtierDash.chartData('ch1/temp')[4].some(v => v !== null)", timeout=60_000)
    _shot(page, "machine-etch-01")

    page.goto(stack.url + "/tiers")
    page.wait_for_selector("#tiers tbody tr[data-tier]", timeout=20_000)
    assert "hot ring" in page.inner_text("#tiers")
    _shot(page, "tiers")
    page.goto(stack.url + "/health")
    page.wait_for_selector("#cards .card", timeout=20_000)
    wait_for(lambda: "readings/s" in page.inner_text("#cards"), timeout=10, what="an ingest rate")
    _shot(page, "health")
    page.goto(stack.url + "/alerts")
    page.wait_for_selector("#alerts tbody tr", timeout=20_000)

    hosts = {urlsplit(url).netloc for url in requested if not url.startswith(("data:", "blob:"))}
    assert hosts == {f"127.0.0.1:{stack.dash_port}"}, f"requests to other hosts: {hosts}"
    assert any("/vendor/uplot/uPlot.iife.min.js" in url for url in requested)
    context.close()


def test_an_excursion_reaches_the_alert_list_within_two_seconds_and_its_ack_survives_restarts(stack, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    _login(page, stack, "/alerts")
    page.wait_for_selector("#alerts tbody tr", timeout=20_000)
    page.wait_for_function("document.getElementById('conn').classList.contains('up')", timeout=10_000)
    time.sleep(1.0)  # the dashboard's own broker subscription is up (it started long before)

    client = _publisher(stack.broker)
    try:
        published = time.monotonic()
        info = client.publish("fab/test-01/ch1/temp", json.dumps({"ts": int(time.time() * 1000), "v": 95.5}), qos=1)
        info.wait_for_publish(5)
        row = page.locator("#alerts tbody tr[data-state='raised']", has_text="test-01")
        row.first.wait_for(timeout=10_000)
        delay = time.monotonic() - published
    finally:
        client.loop_stop()
        client.disconnect()
    print(f"alert publish-to-browser: {delay * 1000:.0f} ms")
    assert delay < 2.0, f"the excursion took {delay:.2f} s to reach the alert list"
    alert_id = row.first.get_attribute("data-id")
    assert alert_id
    _shot(page, "alert-raised")

    row.first.locator("button.ack").click()
    page.fill("#ack-who", "Operator Kim")
    page.fill("#ack-note", "chamber 1 thermocouple checked")
    page.click("#ack-send")
    acked = page.locator(f"#alerts tbody tr[data-id='{alert_id}'] td.acked")
    acked.wait_for(timeout=10_000)
    assert "Operator Kim" in acked.inner_text()
    _shot(page, "alert-acknowledged")

    stack.stop_dashboard()
    stack.stop_instance()
    stack.start_instance()
    stack.start_dashboard()
    page.goto(stack.url + "/alerts")
    restored = page.locator(f"#alerts tbody tr[data-id='{alert_id}'] td.acked")
    restored.wait_for(timeout=30_000)
    text = restored.inner_text()
    assert "Operator Kim" in text and "thermocouple" in text
    _shot(page, "alert-ack-after-restart")
    context.close()


def test_frame_times_with_200_sensors_on_screen_refreshed_every_second(stack, browser):
    """Measures, does not assert: rAF deltas while 200 charts get a new bucket every second."""
    stop = threading.Event()
    names = [f"zone{i // 20:02d}/s{i % 20:02d}" for i in range(200)]

    def publish() -> None:
        client = _publisher(stack.broker)
        try:
            while not stop.is_set():
                now = int(time.time() * 1000)
                ts = [now + k * 100 for k in range(2) for _ in names]
                values = [20 + (i % 7) + (now % 10_000) / 2000 + k for k in range(2) for i, _ in enumerate(names)]
                client.publish("fab/perf-01", json.dumps({"ts": ts, "sensor": names * 2, "v": values}), qos=1)
                stop.wait(0.2)
        finally:
            client.loop_stop()
            client.disconnect()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        context = browser.new_context(viewport={"width": 1900, "height": 1100})
        page = context.new_page()
        _login(page, stack, "/")
        page.goto(stack.url + "/machine/perf-01")
        page.wait_for_function("window.fabtierDash && window.fabtierDash.sensors().length >= 200", timeout=60_000)
        page.wait_for_timeout(2000)
        frames = page.evaluate("""() => new Promise(resolve => {
            const deltas = []; let last = performance.now(); const end = last + 10000;
            const start = window.fabtierDash.version();
            function step(t) { deltas.push(t - last); last = t;
              if (t < end) requestAnimationFrame(step); else resolve({deltas, updates: window.fabtierDash.version() - start}); }
            requestAnimationFrame(step);
        })""")
        deltas = sorted(frames["deltas"])
        p50 = deltas[len(deltas) // 2]
        p99 = deltas[min(len(deltas) - 1, int(len(deltas) * 0.99))]
        print(f"frame times, 200 sensors refreshed every second: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"max {deltas[-1]:.1f} ms over {len(deltas)} frames, {frames['updates']} updates")
        assert frames["updates"] >= 5, "the charts were not refreshed about every second"
        _shot(page, "machine-200-sensors")
        context.close()
    finally:
        stop.set()
        thread.join(timeout=10)
