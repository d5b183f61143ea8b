"""Where durable alert events go: the MQTT alert topic, a log line, Amazon SNS, an HTTP webhook.

The payload and topic (CONTRACT.md section 3, plus extension fields) are pure functions;
each sink is a thin adapter. A sink's `send(events)` delivers the events in order and
returns their number, or raises `SinkError` carrying how many were delivered before the
failure, so that the outbox (`alerts.outbox`) resumes exactly after them. Delivery is
at least once: a retry after a lost acknowledgement can repeat an event, and every payload
carries its `id` (`writer:seq`) so that a receiver can drop repeats.
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid

import orjson
import paho.mqtt.client as mqtt

from core.brokerconn import apply_login, broker_tls, refusal_words
from core.errors import RetryableError
from core.records import AlertEvent
from core.webhook import WebhookError, post_json

log = logging.getLogger("fabtier.alerts")


class SinkError(RetryableError):
    """Delivery failed after `delivered` events of the batch went through."""

    def __init__(self, delivered: int, reason: str) -> None:
        super().__init__(reason)
        self.delivered = delivered
        self.reason = reason


# ---- format -------------------------------------------------------------------------------
def alert_payload(e: AlertEvent) -> dict:
    """The CONTRACT.md section 3 payload, then the extension fields: no note is null (NULL
    in the `alerts` view too), `step` is set for recipe rules only."""
    return {
        "machine": e.machine, "sensor": e.sensor, "ts": e.ts, "value": e.value, "kind": e.kind,
        "threshold": e.threshold, "rule": e.rule, "state": e.state, "raised_at": e.raised_at,
        "id": e.id, "flapping": e.flapping, "note": e.note or None, "lot": e.lot, "wafer": e.wafer,
        "recipe": e.recipe, "recipe_version": e.recipe_version, "step": e.step,
    }


def alert_topic(alert_root: str, e: AlertEvent) -> str:
    """`{alert_root}/{machine}/{sensor}`. A name from a batch payload may hold MQTT wildcards
    (`+`, `#`) or NUL, which no published topic may: they become `_` here (the payload keeps
    the exact names), so that such an alert cannot block the sink."""
    topic = f"{alert_root}/{e.machine}/{e.sensor}"
    return topic.translate(_NOT_IN_TOPICS) if any(c in topic for c in "+#\0") else topic


_NOT_IN_TOPICS = str.maketrans({"+": "_", "#": "_", "\0": "_"})


def alert_line(e: AlertEvent) -> str:
    sign = ">" if e.kind == "high" else "<"
    where = f"{e.machine}/{e.sensor}"
    text = (f"alert {e.state} {where} rule={e.rule} value={e.value:g} {sign} {e.threshold:g} ({e.kind})"
            if e.state == "raised" else
            f"alert {e.state} {where} rule={e.rule} value={e.value:g} ({e.kind} limit {e.threshold:g})")
    if e.lot:
        text += f" lot={e.lot} wafer={e.wafer} recipe={e.recipe} v{e.recipe_version or '?'}"
        if e.step:
            text += f" step={e.step}"
    if e.flapping:
        text += " [flapping]"
    if e.note:
        text += f" ({e.note})"
    return text + f" id={e.id}"


# ---- destinations -------------------------------------------------------------------------
class LogSink:
    """One log line per event; cannot fail."""

    name = "log"

    def send(self, events: list[AlertEvent]) -> int:
        for e in events:
            log.log(logging.WARNING if e.state == "raised" else logging.INFO, "%s", alert_line(e))
        return len(events)

    def close(self) -> None:
        pass


class MqttAlertSink:
    """Publishes to `{alert_root}/{machine}/{sensor}` with QoS 1 over its own connection,
    so that alerts never queue behind the ingest client's acknowledgements. Over `mqtts://`
    with the TLS context it is given (`core.brokerconn`); a refused login is logged once per
    reason and named in the SinkError, while paho tries again with backoff."""

    name = "mqtt"

    def __init__(self, *, url: str, alert_root: str, client_id: str, username: str = "",
                 password: str = "", tls: ssl.SSLContext | None = None, timeout: float = 5.0) -> None:
        self.alert_root = alert_root
        self.timeout = timeout
        self._client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
        host, port = apply_login(self._client, url=url, username=username, password=password, tls=tls)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._connected = threading.Event()
        self._refused: str | None = None
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda c, u, f, rc, p: self._connected.clear()
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            words = refusal_words(reason_code)
            if words != self._refused:
                log.error("the MQTT broker refused the alert sink's login: %s; trying again with backoff", words)
            self._refused = words
            return
        self._refused = None
        self._connected.set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def send(self, events: list[AlertEvent]) -> int:
        if not self._connected.wait(min(self.timeout, 2.0)):
            raise SinkError(0, "not connected to the MQTT broker"
                            + (f" (it refused the login: {self._refused})" if self._refused else ""))
        infos = [self._client.publish(alert_topic(self.alert_root, e), orjson.dumps(alert_payload(e)), qos=1)
                 for e in events]
        for i, info in enumerate(infos):
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise SinkError(i, f"publish failed: {mqtt.error_string(info.rc)}")
            try:
                info.wait_for_publish(self.timeout)
            except (RuntimeError, ValueError) as exc:  # paho: the connection went away meanwhile
                raise SinkError(i, f"publish failed: {exc}") from None
            if not info.is_published():
                raise SinkError(i, f"the broker did not acknowledge within {self.timeout:g} s")
        return len(events)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class WebhookSink:
    """POSTs each event's payload as JSON; any answer but 2xx, or no answer, is a failure.

    Every request carries `Idempotency-Key: <id>` so that the receiver can drop a repeat.
    """

    name = "webhook"

    def __init__(self, *, url: str, token: str = "", timeout: float = 5.0) -> None:
        self.url = url
        self._token = token
        self.timeout = timeout

    def send(self, events: list[AlertEvent]) -> int:
        for i, e in enumerate(events):
            try:
                post_json(self.url, orjson.dumps(alert_payload(e)), idempotency_key=e.id, token=self._token,
                          timeout=self.timeout)
            except WebhookError as exc:
                raise SinkError(i, str(exc)) from None
        return len(events)

    def close(self) -> None:
        pass


class SnsSink:
    """Publishes each event to an Amazon SNS topic (boto3); FIFO topics get the event id as
    deduplication id and the sensor as message group, so order per sensor is kept."""

    name = "sns"

    def __init__(self, *, topic_arn: str, region: str = "", endpoint_url: str = "") -> None:
        import boto3
        from botocore.config import Config

        self.topic_arn = topic_arn
        parts = topic_arn.split(":")
        region = region or (parts[3] if len(parts) > 5 and parts[3] else "us-east-1")
        self._fifo = topic_arn.endswith(".fifo")
        self._client = boto3.client(
            "sns", region_name=region, endpoint_url=endpoint_url or None,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=10))

    def send(self, events: list[AlertEvent]) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        for i, e in enumerate(events):
            attributes = {k: {"DataType": "String", "StringValue": str(v)} for k, v in
                          (("machine", e.machine), ("sensor", e.sensor), ("state", e.state),
                           ("kind", e.kind), ("rule", e.rule))}
            request = {
                "TopicArn": self.topic_arn,
                "Message": orjson.dumps(alert_payload(e)).decode(),
                # SNS subjects: ASCII, at most 100 characters.
                "Subject": f"fabtier alert {e.state}: {e.machine}/{e.sensor}"[:100].encode("ascii", "replace").decode(),
                "MessageAttributes": attributes,
            }
            if self._fifo:
                request["MessageGroupId"] = f"{e.machine}/{e.sensor}"[:128]
                request["MessageDeduplicationId"] = e.id.replace(":", "-")
            try:
                self._client.publish(**request)
            except (BotoCoreError, ClientError) as exc:
                raise SinkError(i, f"SNS publish failed: {exc}") from None
        return len(events)

    def close(self) -> None:
        pass


def build_sinks(settings) -> list:
    """The sinks the configuration asks for: MQTT always, SNS and the webhook when set."""
    broker, alerts = settings.broker, settings.alerts
    sinks: list = [MqttAlertSink(url=broker.url, alert_root=broker.alert_root,
                                 client_id=f"{broker.client_id}-alerts-{uuid.uuid4().hex[:6]}",
                                 username=broker.username, password=broker.password.reveal(),
                                 tls=broker_tls(broker))]
    if alerts.webhook_url:
        sinks.append(WebhookSink(url=alerts.webhook_url, token=alerts.webhook_token.reveal(),
                                 timeout=alerts.webhook_timeout))
    if alerts.sns_topic_arn:
        sinks.append(SnsSink(topic_arn=alerts.sns_topic_arn, region=alerts.sns_region,
                             endpoint_url=alerts.sns_endpoint_url))
    return sinks
