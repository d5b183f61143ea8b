"""Telling the world about retrieval jobs: every state change of a job is handed to each
configured notifier (`JobNotifier`), with the job's JSON object (`Job.public()`).

- `MqttJobNotifier` (always): a retained QoS 1 message on `{jobs_root}/retrievals/{id}`
  (CONTRACT.md section 3b), so that a subscriber that comes later still gets the job's last
  state. It connects for the notice and disconnects after the broker's PUBACK: state changes
  are rare (a few per job), and a connection kept for them would be one more session to
  watch.
- `WebhookJobNotifier` (with `[retrieval] webhook_url`): POST of the JSON object; any answer
  but 2xx is a failure. `Idempotency-Key: {id}:{state}` lets the receiver drop a repeat.

A notifier raises `NotifyError` when the notice did not go through; the job store keeps, per
notifier, the last state it was told of, and the follower tries again at its next run (at
least once; a job that moved on meanwhile is announced in its newest state).
"""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from typing import Protocol

import paho.mqtt.client as mqtt

from core.brokerconn import apply_login, broker_tls, connection_problem, refusal_words
from core.errors import RetryableError
from core.settings import Settings
from core.webhook import WebhookError, post_json

MQTT = "mqtt"
WEBHOOK = "webhook"


class NotifyError(RetryableError):
    """A notice did not reach its receiver; it is sent again at the follower's next run."""


class JobNotifier(Protocol):
    name: str

    def notify(self, job: dict) -> None:
        """Deliver the job's JSON object, or raise NotifyError."""
        ...


def job_topic(jobs_root: str, job_id: str) -> str:
    return f"{jobs_root}/retrievals/{job_id}"


def _payload(job: dict) -> bytes:
    return json.dumps(job, sort_keys=True).encode()


class MqttJobNotifier:
    name = MQTT

    def __init__(self, *, url: str, jobs_root: str, client_id: str, username: str = "", password: str = "",
                 tls: ssl.SSLContext | None = None, timeout: float = 5.0) -> None:
        self.url = url
        self.jobs_root = jobs_root
        self.client_id = client_id
        self._username, self._password = username, password
        self._tls = tls
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"MqttJobNotifier(url={self.url!r}, jobs_root={self.jobs_root!r})"

    def notify(self, job: dict) -> None:
        # A fresh client id per notice: two processes (or a notice while the last one is
        # still closing) must not take each other's session over.
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"{self.client_id}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv311,
                             clean_session=True)
        host, port = apply_login(client, url=self.url, username=self._username, password=self._password,
                                 tls=self._tls)
        connected = threading.Event()
        refused: list[str] = []

        def on_connect(c, userdata, flags, reason, properties) -> None:
            if reason.is_failure:
                refused.append(f"it refused the login: {refusal_words(reason)}")
            connected.set()

        client.on_connect = on_connect
        try:
            client.connect(host, port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise NotifyError(f"cannot reach the MQTT broker at {self.url}: {connection_problem(exc)}") from None
        client.loop_start()
        try:
            if not connected.wait(self.timeout) or refused:
                raise NotifyError(f"the MQTT broker at {self.url} did not accept the connection"
                                  + (f": {refused[0]}" if refused else f" within {self.timeout:g} s"))
            info = client.publish(job_topic(self.jobs_root, job["id"]), _payload(job), qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise NotifyError(f"publish failed: {mqtt.error_string(info.rc)}")
            try:
                info.wait_for_publish(self.timeout)
            except (RuntimeError, ValueError) as exc:  # paho: the connection went away meanwhile
                raise NotifyError(f"publish failed: {exc}") from None
            if not info.is_published():
                raise NotifyError(f"the broker did not acknowledge within {self.timeout:g} s")
        finally:
            client.disconnect()
            client.loop_stop()


class WebhookJobNotifier:
    name = WEBHOOK

    def __init__(self, *, url: str, token: str = "", timeout: float = 5.0) -> None:
        self.url = url
        self._token = token
        self.timeout = timeout

    def notify(self, job: dict) -> None:
        try:
            post_json(self.url, _payload(job), idempotency_key=f"{job['id']}:{job['state']}", token=self._token,
                      timeout=self.timeout, what="the retrieval webhook")
        except WebhookError as exc:
            raise NotifyError(str(exc)) from None


def notifier_names(settings: Settings) -> list[str]:
    """The notifiers the configuration asks for: MQTT always, the webhook when set."""
    return [MQTT] + ([WEBHOOK] if settings.retrieval.webhook_url else [])


def build_notifiers(settings: Settings) -> list[JobNotifier]:
    broker, retrieval = settings.broker, settings.retrieval
    notifiers: list[JobNotifier] = [MqttJobNotifier(
        url=broker.url, jobs_root=broker.jobs_root, client_id=f"{broker.client_id}-jobs",
        username=broker.username, password=broker.password.reveal(), tls=broker_tls(broker))]
    if retrieval.webhook_url:
        notifiers.append(WebhookJobNotifier(url=retrieval.webhook_url, token=retrieval.webhook_token.reveal(),
                                            timeout=retrieval.webhook_timeout))
    return notifiers
