"""Shared fixtures: a real mosquitto per test on a free port, settings in a temp directory.

Under CI (the environment variable CI set, as `.ci/run` runs with CI=true) a skipped test
fails the run: a test skipped because a tool is missing would otherwise pass CI silently.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import Settings
from fabtier.broker import LocalBroker, find_mosquitto, free_port
from fabtier.config import settings_from_mapping

_ids = itertools.count()


@pytest.fixture
def broker(tmp_path: Path):
    """mosquitto on a free port with `persistence true` in its own directory: `stop()` (SIGTERM)
    saves sessions, in-flight and queued QoS 1 messages to mosquitto.db, and `start()` brings
    them back on the same port."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (scripts/test.sh installs it)")
    with LocalBroker(tmp_path / "broker") as running:
        yield running


def make_settings(tmp_path: Path, broker: LocalBroker | None, /, **sections: dict) -> Settings:
    """Settings for one test: own data dir, own client id, free API port, no environment."""
    doc: dict = {"data_dir": str(tmp_path / "data")}
    doc["broker"] = {"client_id": f"fabtier-test-{os.getpid()}-{next(_ids)}"}
    if broker is not None:
        doc["broker"]["url"] = broker.url
    doc["api"] = {"port": free_port()}
    doc["cold"] = {"seal_every": "1h"}
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return settings_from_mapping(doc, env={})


def write_config(settings: Settings, path: Path) -> Path:
    """The TOML equivalent of `settings`, for driving the CLI."""
    path.write_text(
        f'data_dir = "{settings.data_dir}"\n'
        f'[broker]\nurl = "{settings.broker.url}"\nclient_id = "{settings.broker.client_id}"\n'
        f'[api]\nport = {settings.api.port}\n'
        f'[cold]\nseal_every = "{int(settings.cold.seal_every)}s"\n'
        f'[hot]\nwindow = "{int(settings.hot.window)}s"\n',
        encoding="utf-8",
    )
    return path


def fabtier_cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would."""
    exe = shutil.which("fabtier", path=str(Path(sys.executable).parent)) or shutil.which("fabtier")
    command = [exe, *args] if exe else [sys.executable, "-m", "fabtier.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"fabtier {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def mosquitto_pub(broker: LocalBroker, topic: str, *messages: str, qos: int = 1) -> None:
    """Publish with the independent client, one message per line."""
    assert all("\n" not in m for m in messages)
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", str(qos),
                    "-t", topic, "-l"], input="\n".join(messages) + "\n", text=True, check=True, timeout=30)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def start_fabtier_run(config: Path) -> subprocess.Popen:
    """`fabtier run` in its own process, as an operator starts it (so it can be killed -9)."""
    return subprocess.Popen([sys.executable, "-m", "fabtier.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(settings: Settings, timeout: float = 60) -> None:
    """Until the instance's /health answers 200."""
    from fabtier.reader import _request

    def ready() -> bool:
        try:
            return _request(settings, "GET", "/health", timeout=1)[0] == 200
        except OSError:
            return False
    wait_for(ready, timeout=timeout, what="fabtier to be ready")


class MosquittoSub:
    """The independent subscriber: `mosquitto_sub` on `topic`, collecting (topic, JSON payload)."""

    def __init__(self, broker: LocalBroker, topic: str) -> None:
        import threading
        self.messages: list[tuple[str, dict]] = []
        self._process = subprocess.Popen(
            # Line-buffered: a pipe would hold its output back.
            ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic,
             "-v", "-d"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._subscribed.wait(10):
            self.stop()
            raise AssertionError("mosquitto_sub did not subscribe")

    def _read(self) -> None:
        import json
        for line in self._process.stdout:
            line = line.rstrip("\n")
            if line.startswith("Subscribed"):
                self._subscribed.set()
            elif line and not line.startswith("Client "):
                topic, _, payload = line.partition(" ")
                self.messages.append((topic, json.loads(payload)))

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


@pytest.fixture
def alert_subscriber(broker):
    """An independent subscriber to every alert topic (`fab-alerts/#`)."""
    sub = MosquittoSub(broker, "fab-alerts/#")
    yield sub
    sub.stop()


# ---- AWS stand-in: moto's HTTP server (never the in-process mock_aws decorator) -----------
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/fabtier-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/fabtier-test-aws-credentials",
}


@pytest.fixture(scope="session")
def moto_server():
    """moto's server on a free port, with fake credentials in the environment (so that
    subprocesses, boto3 and pyarrow's S3 client all find it); yields its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(_AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(moto_server):
    """A fresh, empty bucket on the moto server: (endpoint_url, bucket name)."""
    import boto3

    name = f"fabtier-test-{os.getpid()}-{next(_ids)}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=name)
    return moto_server, name


# ---- CI: a skipped test fails the run ------------------------------------------------------
_skipped: list[tuple[str, str]] = []  # (node id, reason) of every test skipped in this session


def running_under_ci() -> bool:
    """CI=true (or any value but empty, 0, false, no) in the environment."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_sessionstart(session: pytest.Session) -> None:
    _skipped.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an expected failure is not a skip
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if running_under_ci() and _skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not (running_under_ci() and _skipped):
        return
    terminalreporter.section("skipped tests fail the run under CI", sep="=", red=True, bold=True)
    for nodeid, reason in _skipped:
        terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)
    terminalreporter.line(f"{len(_skipped)} test(s) skipped with CI={os.environ.get('CI')}: CI is meant to run "
                          "every test; install what they need (scripts/setup.sh) or fix why they skip.", red=True)


@pytest.fixture
def restore_proxy(s3_bucket):
    """moto's S3 behind a proxy that holds restores in progress until the test releases them
    (`RestoreHoldingS3` in tests/tiers/test_restore_s3.py): (proxy, bucket name)."""
    from tests.tiers.test_restore_s3 import RestoreHoldingS3

    endpoint, bucket = s3_bucket
    proxy = RestoreHoldingS3(endpoint)
    yield proxy, bucket
    proxy.close()


def watch_seal_children(patch: pytest.MonkeyPatch) -> list[str]:
    """Watches `fabtier.forked.call_in_fork` through `patch` (undone with it): the list gets
    how each forked child ended, "answered" or "lost"."""
    from fabtier import forked

    ended: list[str] = []
    call_in_fork = forked.call_in_fork

    def watched(fn, **options):
        try:
            result = call_in_fork(fn, **options)
        except forked.ChildLost:
            ended.append("lost")
            raise
        ended.append("answered")
        return result
    patch.setattr(forked, "call_in_fork", watched)
    return ended
