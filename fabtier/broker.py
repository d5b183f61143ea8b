"""A local mosquitto for `fabtier demo` and the tests: free port, persistence in a directory;
optionally TLS only, with client certificates required, and logins from a password file."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BrokerTlsFiles:
    """The broker's side of TLS (PEM files): the CA that signs the clients' certificates, the
    broker's own certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True


def write_password_file(path: Path, logins: dict[str, str]) -> Path:
    """A mosquitto password file (hashed) for these users, made by `mosquitto_passwd -b`."""
    binary = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    for user, password in logins.items():
        # -b takes the password as an argument: for test and demo brokers only.
        done = subprocess.run([binary, "-b", str(path), user, password], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=30)
        if done.returncode != 0:
            raise FabtierError(f"mosquitto_passwd failed for user {user!r} (exit {done.returncode})")
    return path


# How often the benches' broker snapshots its state (mosquitto's autosave_interval): never
# while it runs, only when it stops. A snapshot writes every message queued for a session, and
# a bench run at full speed queues what the instance has not taken yet: at 100,000 sensors,
# hundreds of megabytes a second, which cost the broker 2.8-7.8 CPU-seconds of a 20 s run
# (1.0 at 4,000 sensors, which lags less) on the cores the instance runs on. The benches never
# restart their broker, so they lose nothing by it.
NO_AUTOSAVE = 0


class LocalBroker:
    """mosquitto on 127.0.0.1 with its sessions persisted under `directory`, saved every
    `autosave_s` seconds (`NO_AUTOSAVE`: only when it stops) and when it stops. With `tls`, its
    one listener speaks only TLS (`url` is mqtts://); with `password_file`, anonymous clients
    are refused."""

    def __init__(self, directory: Path, *, port: int | None = None, tls: BrokerTlsFiles | None = None,
                 password_file: Path | None = None, autosave_s: int = 1) -> None:
        self.directory = directory
        self.autosave_s = autosave_s
        self.port = port or free_port()
        self.tls = tls
        self.password_file = password_file
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise FabtierError("mosquitto is not running")
        return self._process.pid

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _security(self) -> str:
        lines = []
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca_file}", f"certfile {self.tls.cert_file}", f"keyfile {self.tls.key_file}",
                      f"require_certificate {'true' if self.tls.require_certificate else 'false'}"]
        if self.password_file is not None:
            lines += [f"password_file {self.password_file}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        return "".join(line + "\n" for line in lines)

    def start(self) -> LocalBroker:
        binary = find_mosquitto()
        if binary is None:
            raise FabtierError("mosquitto is not installed; install it with "
                               "'apt-get install -y mosquitto mosquitto-clients'")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + self._security() +
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

            f"autosave_interval {self.autosave_s}\n"
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
