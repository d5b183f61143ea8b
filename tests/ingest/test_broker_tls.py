"""Broker security (issue 14) against a real mosquitto that speaks only TLS, requires a client
certificate and checks a password file (`mosquitto_passwd -b`), with a throwaway CA from
trustme: the pipeline ingests over mqtts://, alerts, retrieval notices and the simulator go
over it too; a wrong password keeps /health at 503 with the broker's reason in the log and
no password anywhere; a missing certificate is named."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.brokerconn import broker_tls, tls_context
from core.errors import ConfigError
from fabtier.broker import BrokerTlsFiles, LocalBroker, find_mosquitto, write_password_file
from fabtier.pipeline import Pipeline
from ingest.subscriber import Subscriber
from lifecycle import notify
from simulator import run_simulator
from tests.conftest import make_settings, wait_for, write_config

trustme = pytest.importorskip("trustme")

USER = "fab-ingest"
PASSWORD = f"pw-{uuid.uuid4().hex}"  # unique, so that any leak of it is found by a plain search
WRONG = f"wrong-{uuid.uuid4().hex}"
RULE = {"name": "chamber-overtemp", "sensor": "*/ch*/temp", "high": 80.0}


@dataclass
class Pki:
    ca: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by a CA the broker does not know
    stranger_key: Path
    broker_files: BrokerTlsFiles


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, stranger_ca = trustme.CA(), trustme.CA()
    folder = tmp_path / "pki"
    folder.mkdir()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(folder / "server.pem"), append=i > 0)
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    for name, authority in (("client", ca), ("stranger", stranger_ca)):
        cert = authority.issue_cert(f"{name}.fabtier.example")
        cert.cert_chain_pems[0].write_to_path(str(folder / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(folder / f"{name}.key"))
    return Pki(ca=folder / "ca.pem", client_cert=folder / "client.pem", client_key=folder / "client.key",
               stranger_cert=folder / "stranger.pem", stranger_key=folder / "stranger.key",
               broker_files=BrokerTlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key"))


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki):
    if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None or shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto, mosquitto_passwd or mosquitto_sub is not installed (scripts/test.sh installs them)")
    passwords = write_password_file(tmp_path / "mosquitto.passwd", {USER: PASSWORD})
    with LocalBroker(tmp_path / "tls-broker", tls=pki.broker_files, password_file=passwords) as running:
        yield running


def _password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "broker-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def _broker_keys(pki: Pki, tmp_path: Path, password: str = PASSWORD, **changes) -> dict:
    keys = {"username": USER, "password_file": str(_password_file(tmp_path, password)), "ca_file": str(pki.ca),
            "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    keys.update(changes)
    return {k: v for k, v in keys.items() if v is not None}


def _client_args(broker: LocalBroker, pki: Pki) -> list[str]:
    """mosquitto_pub/_sub over TLS with the client certificate and the login."""
    return ["-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(pki.ca), "--cert", str(pki.client_cert),
            "--key", str(pki.client_key), "-u", USER, "-P", PASSWORD]


def _tls_pub(broker: LocalBroker, pki: Pki, topic: str, *messages: str) -> None:
    subprocess.run(["mosquitto_pub", *_client_args(broker, pki), "-q", "1", "-t", topic, "-l"],
                   input="\n".join(messages) + "\n", text=True, check=True, timeout=30)


def _tls_sub(broker: LocalBroker, pki: Pki, topic: str, count: int) -> subprocess.Popen:
    return subprocess.Popen(["mosquitto_sub", *_client_args(broker, pki), "-q", "1", "-t", topic, "-v",
                             "-C", str(count), "-W", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(sub: subprocess.Popen) -> list[tuple[str, dict]]:
    out, err = sub.communicate(timeout=90)
    assert sub.returncode == 0, err
    return [(line.partition(" ")[0], json.loads(line.partition(" ")[2])) for line in out.splitlines() if line]


def test_ingest_alerts_notices_and_simulator_over_mqtts_with_client_certificate_and_password(
        tmp_path, pki, tls_broker):
    assert tls_broker.url.startswith("mqtts://")
    settings = make_settings(tmp_path, tls_broker, broker=_broker_keys(pki, tmp_path), alerts={"rules": [RULE]})
    assert settings.broker.password.reveal() == PASSWORD and PASSWORD not in repr(settings)
    alerts = _tls_sub(tls_broker, pki, "fab-alerts/#", 1)
    pipeline = Pipeline(settings)
    pipeline.start()
    try:
        assert pipeline.ready and pipeline.subscriber is not None and pipeline.subscriber.problem is None
        ts = int(time.time() * 1000)
        _tls_pub(tls_broker, pki, "fab/etch-01/ch1/temp",
                 *(json.dumps({"ts": ts + i, "v": v}) for i, v in enumerate([20.0, 21.0, 95.0])))
        wait_for(lambda: pipeline.metrics.readings_stored == 3, what="the readings over TLS")
        (topic, alert), = _lines(alerts)
        assert topic == "fab-alerts/etch-01/ch1/temp" and alert["state"] == "raised" and alert["value"] == 95.0

        # The simulator publishes over the same TLS and login.
        stats = run_simulator(broker_url=settings.broker.url, machines=1, sensors=2, rate_hz=20, batch=2,
                              seconds=0.5, username=USER, password=PASSWORD, tls=broker_tls(settings.broker))
        assert stats.readings > 0
        wait_for(lambda: pipeline.metrics.readings_stored == 3 + stats.readings, what="the simulator's readings")

        # A retrieval job's notice, retained: a subscriber that comes later gets it.
        notifier = notify.build_notifiers(settings)[0]
        notifier.notify({"id": "r-tls", "state": "ready"})
        assert PASSWORD not in repr(notifier)
        (topic, job), = _lines(_tls_sub(tls_broker, pki, "fab-jobs/retrievals/r-tls", 1))
        assert job == {"id": "r-tls", "state": "ready"}
    finally:
        pipeline.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_wrong_password_keeps_health_503_logs_the_reason_and_retries_without_the_password(
        tmp_path, pki, tls_broker):
    settings = make_settings(tmp_path, tls_broker, broker=_broker_keys(pki, tmp_path, password_file=None))
    config = write_config(settings, tmp_path / "fabtier.toml")
    config.write_text(config.read_text().replace(
        "[broker]\n", "[broker]\n" + "".join(f'{k} = "{v}"\n' for k, v in _broker_keys(
            pki, tmp_path, password_file=None).items())))
    env = {**os.environ, "FABTIER_BROKER_PASSWORD": WRONG}
    run = subprocess.Popen([sys.executable, "-m", "fabtier.cli", "run", "--config", str(config)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(run.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        try:
            wait_for(lambda: sum("fabtier.ingest" in line and "refused the login" in line for line in list(output)) >= 2,
                     timeout=60, what="two refused logins of the ingest client in the log")
        except AssertionError:
            raise AssertionError("".join(output)) from None
        status, health = _get(settings.api_url + "/health")
        assert status == 503 and json.loads(health)["status"] != "ready"
        status, metrics = _get(settings.api_url + "/metrics")
        assert status == 200
        for text in (health, metrics):
            assert WRONG not in text and PASSWORD not in text
    finally:
        run.terminate()
        run.wait(timeout=60)
        reader.join(timeout=10)
    log = "".join(output)
    assert run.returncode == 0, log  # SIGTERM while waiting for the broker: a clean stop
    refusals = [line for line in log.splitlines() if "fabtier.ingest" in line and "refused the login" in line]
    # mosquitto says "Not authorized" to a wrong password (MQTT 5 reason 135), others "Bad user
    # name or password" (134): the broker's reason is logged as it gave it, with what to check.
    assert "ERROR" in refusals[0] and "(attempt 1)" in refusals[0] and "(attempt 2)" in refusals[1]
    assert "Not authorized (CONNACK reason code 135)" in refusals[0] and "FABTIER_BROKER_PASSWORD" in refusals[0]
    assert "trying again" in refusals[0]
    assert WRONG not in log and PASSWORD not in log and "Traceback" not in log


def _problem_of(sub: Subscriber) -> str:
    """What the subscriber found wrong, once it has tried (it keeps trying until cancelled)."""
    cancel = threading.Event()
    starting = threading.Thread(target=sub.start, kwargs={"timeout": None, "cancel": cancel}, daemon=True)
    starting.start()
    try:
        wait_for(lambda: sub.problem is not None, what="a failed connection attempt")
        return sub.problem or ""
    finally:
        cancel.set()
        starting.join(timeout=30)


@pytest.mark.parametrize("cert, key, words", [
    (None, None, "requires a client certificate"),
    ("stranger", "stranger", "does not accept the client certificate"),
])
def test_a_client_without_an_accepted_certificate_is_told_why(tmp_path, pki, tls_broker, cert, key, words):
    files = {"cert_file": str(getattr(pki, f"{cert}_cert")), "key_file": str(getattr(pki, f"{key}_key"))} if cert else {}
    sub = Subscriber(url=tls_broker.url, client_id=f"no-cert-{uuid.uuid4().hex[:6]}", topics=["fab/#"],
                     on_message=lambda *a: None, username=USER, password=PASSWORD,
                     tls=tls_context(ca_file=str(pki.ca), **files))
    message = _problem_of(sub)
    assert words in message and "cert_file" in message and PASSWORD not in message
    assert not sub.ready.is_set()


def test_an_untrusted_broker_certificate_names_ca_file(tmp_path, pki, tls_broker):
    sub = Subscriber(url=tls_broker.url, client_id="untrusted", topics=["fab/#"], on_message=lambda *a: None,
                     username=USER, password=PASSWORD,
                     tls=tls_context(cert_file=str(pki.client_cert), key_file=str(pki.client_key)))
    assert re.search(r"not trusted.*\[broker\] ca_file", _problem_of(sub))


def test_missing_or_mismatched_tls_files_are_config_errors_naming_the_key(tmp_path, pki):
    url = "mqtts://127.0.0.1:8883"

    def error(**broker) -> ConfigError:
        with pytest.raises(ConfigError) as caught:
            make_settings(tmp_path, None, broker={"url": url, **broker})
        return caught.value

    missing = error(cert_file=str(tmp_path / "nope.pem"), key_file=str(pki.client_key))
    assert missing.key == "[broker] cert_file" and "does not exist" in str(missing) and "client certificate" in missing.fix
    mismatched = error(cert_file=str(pki.client_cert), key_file=str(pki.stranger_key))
    assert mismatched.key == "[broker] key_file" and "cannot be loaded" in str(mismatched)
    assert error(key_file=str(pki.client_key)).key == "[broker] key_file"
    assert error(ca_file=str(pki.client_key)).key == "[broker] ca_file"
    plain = error(url="mqtt://127.0.0.1:1883", ca_file=str(pki.ca))
    assert plain.key == "[broker] ca_file" and "mqtts://" in plain.fix


def test_the_password_never_comes_from_the_file_itself(tmp_path):
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, None, broker={"password": PASSWORD})
    assert caught.value.key == "[broker] password" and PASSWORD not in str(caught.value)
    assert "FABTIER_BROKER_PASSWORD" in caught.value.fix and "password_file" in caught.value.fix
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, None, broker={"url": f"mqtts://{USER}:{PASSWORD}@127.0.0.1:8883"})
    assert caught.value.key == "[broker] url" and PASSWORD not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, None, broker={"url": f"mqtts://{USER}:{PASSWORD}@127.0.0.1:x"})
    assert PASSWORD not in str(caught.value)


def test_password_file_rules(tmp_path):
    from fabtier.config import settings_from_mapping
    path = _password_file(tmp_path, PASSWORD)
    doc = {"data_dir": str(tmp_path), "broker": {"username": USER, "password_file": str(path)}}
    settings = settings_from_mapping(doc, env={})
    assert settings.broker.password.reveal() == PASSWORD
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.broker)
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(doc, env={"FABTIER_BROKER_PASSWORD": WRONG})
    assert caught.value.key == "[broker] password_file" and WRONG not in str(caught.value)
    for content in ("", "\n", f"{PASSWORD}\nmore\n"):
        path.write_text(content)
        with pytest.raises(ConfigError) as caught:
            settings_from_mapping(doc, env={})
        assert caught.value.key == "[broker] password_file" and PASSWORD not in str(caught.value)
    path.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        settings_from_mapping(doc, env={})
