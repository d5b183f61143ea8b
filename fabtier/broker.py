"""A local mosquitto for `fabtier demo` and the tests: free port, persistence in a directory."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

from core.errors import FabtierError
from fabtier import processes

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise FabtierError(f"nothing listens on {host}:{port} after {timeout} s")


class LocalBroker:
    """mosquitto on 127.0.0.1 with its sessions persisted under `directory`."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise FabtierError("mosquitto is not running")
        return self._process.pid

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        binary = find_mosquitto()
        if binary is None:
            raise FabtierError("mosquitto is not installed; install it with "
                               "'apt-get install -y mosquitto mosquitto-clients'")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Run as whoever started it: mosquitto started as root otherwise switches to the
            # user "mosquitto", which cannot write the persistence directory we created.
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            # Sessions of a stopped fabtier must hold everything published meanwhile.
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            # Unlimited for MQTT 3.1.1 clients (mosquitto_sub in the benchmark baseline);
            # MQTT 5 clients such as fabtier set their own receive maximum.
            "max_inflight_messages 0\n"

            "autosave_interval 1\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        log = open(self.directory / "mosquitto.log", "ab")
        self._process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        try:
            wait_for_port(self.port)
        except FabtierError:
            self.stop()
            raise FabtierError(f"mosquitto did not start; see {self.directory / 'mosquitto.log'}") from None
        return self

    def stop(self) -> None:
        processes.stop(self._process, timeout=10)
        self._process = None

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
