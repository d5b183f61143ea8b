"""The MQTT side of ingest: a paho-mqtt 2.x client with a persistent session and manual acks.

QoS 1 messages are acknowledged only when the pipeline says they are durable (`ack`), so a
crash before that makes the broker deliver them again. The session is persistent
(MQTT 5 clean_start=False with a session expiry), so the broker queues what is published
while fabtier is down.
"""

from __future__ import annotations

import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.errors import RetryableError
from ingest.readahead import ReadAheadClient

log = logging.getLogger("fabtier.ingest")

_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2), packet id
MessageHandler = Callable[[str, bytes, int, int], None]  # topic, payload, qos, mid


class Subscriber:
    def __init__(self, *, url: str, client_id: str, topics: list[str], on_message: MessageHandler,
                 username: str = "", password: str = "", session_expiry: float = 86400,
                 keepalive: float = 30, receive_maximum: int = 1000) -> None:
        parsed = urlparse(url)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
        self._topics = topics
        self._handler = on_message
        self._session_expiry = int(session_expiry)
        self._receive_maximum = receive_maximum
        self._keepalive = max(5, int(keepalive))
        self.ready = threading.Event()
        self.connected = threading.Event()
        self._client = ReadAheadClient(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if parsed.scheme == "mqtts":
            self._client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        if username:
            self._client.username_pw_set(username, password or None)
        # paho's own queue of outgoing packets must not cap how many deliveries are in flight.
        self._client.max_inflight_messages_set(receive_maximum)
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.deliver = on_message  # whole PUBLISH packets skip paho's MQTTMessage

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry
        props.ReceiveMaximum = self._receive_maximum
        return props

    def start(self, timeout: float = 10.0) -> None:
        try:
            self._client.connect(self._host, self._port, keepalive=self._keepalive, clean_start=False,
                                 properties=self._connect_properties())
        except OSError as exc:
            raise RetryableError(f"cannot reach the MQTT broker at {self._host}:{self._port}: {exc}") from None
        self._client.loop_start()
        if not self.ready.wait(timeout):
            self.stop()
            raise RetryableError(f"the MQTT broker at {self._host}:{self._port} did not accept the subscription")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        self.connected.set()
        log.info("connected to %s:%s (session present: %s)", self._host, self._port, flags.session_present)
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused the subscription: %s", failed)
            return
        self.ready.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code != 0:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        # paho types the payload bytes | bytearray; it is bytes (struct.unpack), which bytes()
        # returns as is, without a copy
        self._handler(message.topic, bytes(message.payload), message.qos, message.mid)

    def ack(self, mid: int) -> None:
        self._client.ack(mid, 1)

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge many QoS 1 messages with one write to the socket.

        paho's public `ack()` queues one packet and wakes its network loop once per message,
        which costs more than the message itself for small messages. paho has no public
        batch acknowledgement, so the PUBACKs of one group commit are queued as a single
        buffer through its packet queue (paho-mqtt 2.x; `ack()` per message otherwise).
        """
        if not mids:
            return
        queue = getattr(self._client, "_packet_queue", None)
        if queue is None or len(mids) == 1:
            for mid in mids:
                self._client.ack(mid, 1)
            return
        packet = b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids)
        queue(0x40, packet, 0, 1)

    def stop(self, flush_timeout: float = 5.0) -> None:
        # paho's network loop ends as soon as disconnect() is called and drops what it had
        # not yet written, acknowledgements included (their messages would come back on the
        # next connection): let it write them first.
        deadline = time.monotonic() + flush_timeout
        while (self._client.is_connected() and getattr(self._client, "_out_packet", None)
               and time.monotonic() < deadline):
            time.sleep(0.005)
        self._client.disconnect()
        self._client.loop_stop()
