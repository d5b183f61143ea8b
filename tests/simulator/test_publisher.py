import json
import shutil
import subprocess
import threading
import time

import pytest

from fabtier.broker import free_port
from simulator import BrokerError, run_simulator
from simulator.publisher import parse_broker_url


def test_parse_broker_url():
    assert parse_broker_url("mqtt://broker.local:1884") == ("broker.local", 1884, False, None, None)
    assert parse_broker_url("mqtt://10.0.0.5") == ("10.0.0.5", 1883, False, None, None)
    assert parse_broker_url("mqtts://u%40x:p%3Aw@h") == ("h", 8883, True, "u@x", "p:w")
    with pytest.raises(ValueError):
        parse_broker_url("http://h:80")


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(BrokerError, match="cannot reach MQTT broker"):
        run_simulator(broker_url=f"mqtt://127.0.0.1:{free_port()}", seconds=1)


class Subscriber:
    """`mosquitto_sub`, an independent client, counting what the broker delivers."""

    def __init__(self, port: int, topics: list[str]):
        # stdbuf: line-buffered stdout, so that lines arrive as messages do
        cmd = ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port),
               "-q", "1", "-v", "-d"]
        for t in topics:
            cmd += ["-t", t]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.subscribed = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("Subscribed"):  # -d prints this once the SUBACK is in
                self.subscribed.set()
            elif not line.startswith("Client "):
                self.lines.append(line.rstrip("\n"))

    def messages(self) -> list[tuple[str, dict]]:
        out = []
        for line in list(self.lines):
            topic, _, payload = line.partition(" ")
            out.append((topic, json.loads(payload)))
        return out

    def readings(self) -> int:
        return sum(len(body["ts"]) if isinstance(body["ts"], list) else 1
                   for topic, body in self.messages() if topic.startswith("fab/"))

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=5)


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None or shutil.which("stdbuf") is None,
                    reason="mosquitto_sub or stdbuf is not installed")
def test_every_published_reading_reaches_a_subscriber(broker):
    sub = Subscriber(broker.port, ["fab/#", "fab-ctx/#"])
    try:
        assert sub.subscribed.wait(10)
        progress = []
        stats = run_simulator(broker_url=broker.url, machines=3, sensors=4, rate_hz=20, batch=10,
                              seconds=2, seed=1, on_progress=progress.append)
        # the broker acknowledged everything; give it time to forward the last messages
        deadline = time.monotonic() + 10
        while len(sub.lines) < stats.messages and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.close()
    msgs = sub.messages()
    assert len(msgs) == stats.messages
    assert stats.end_ms - stats.start_ms == 2000
    # 3 machines x 4 sensors x 20 Hz x 2 s, less what sensor dropouts swallowed
    assert 0.9 * 480 <= stats.readings <= 480
    assert sub.readings() == stats.readings
    ctx = [body for topic, body in msgs if topic.startswith("fab-ctx/")]
    assert len(ctx) == stats.context_events
    for topic, body in msgs:
        if topic.startswith("fab/"):
            assert topic.count("/") == 1 and len(body["ts"]) <= 10
            assert all(stats.start_ms <= t < stats.end_ms + 50 for t in body["ts"])
    assert progress and all(p.start_ms == stats.start_ms for p in progress)
    assert progress[-1].readings <= stats.readings
