"""The broker's alert topic, `{alert_root}/#` (CONTRACT.md section 3), as the dashboard hears
it: paho's network thread hands each event to the dashboard's event loop, which pushes it to
the browsers at once, so an alert reaches a screen within a second of its publish (polling
SQL could not). A clean session: what was published while the dashboard was down comes from
the instance's alert list instead (`dashboard.live`)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from core.brokerconn import apply_login, broker_tls, refusal_words
from core.settings import BrokerSettings

log = logging.getLogger("fabtier.dashboard")


class AlertFeed:
    def __init__(self, broker: BrokerSettings, on_alert: Callable[[dict], Any],
                 on_state: Callable[[bool], Any] | None = None) -> None:
        self.topic = f"{broker.alert_root}/#"
        self.connected = False
        self._on_alert = on_alert
        self._on_state = on_state
        self._refused: str | None = None
        self._client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=f"fabtier-dashboard-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv311, clean_session=True)
        self._host, self._port = apply_login(self._client, url=broker.url, username=broker.username,
                                             password=broker.password.reveal(), tls=broker_tls(broker))
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_connect = self._connect
        self._client.on_disconnect = self._disconnect
        self._client.on_message = self._message

    def start(self) -> AlertFeed:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            words = refusal_words(reason_code)
            if words != self._refused:
                log.error("the MQTT broker refused the dashboard's login: %s; trying again with backoff", words)
            self._refused = words
            return
        self._refused = None
        client.subscribe(self.topic, qos=1)
        self._set(True)

    def _disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._set(False)

    def _set(self, connected: bool) -> None:
        self.connected = connected
        if self._on_state is not None:
            self._on_state(connected)

    def _message(self, client, userdata, message) -> None:
        try:
            event = json.loads(message.payload)
        except ValueError:
            log.warning("an alert on %s is not JSON; skipped", message.topic)
            return
        if isinstance(event, dict):
            self._on_alert(event)
