"""A real mosquitto broker for tests, on a free local port, stopped at teardown."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = "/usr/sbin/mosquitto"


@dataclass(frozen=True)
class Broker:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running_mosquitto(workdir: Path, *, timeout_s: float = 10.0) -> Iterator[Broker]:
    """Start mosquitto with anonymous access on 127.0.0.1 and a free port; yield its address."""
    host, port = "127.0.0.1", free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\n")
    log_path = workdir / "mosquitto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not _accepts(host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start on port {port}:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield Broker(host, port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which(MOSQUITTO) is None:
        pytest.skip(f"{MOSQUITTO} is not installed")
    with running_mosquitto(tmp_path) as broker:
        yield broker
