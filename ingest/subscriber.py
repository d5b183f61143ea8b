"""The MQTT side of ingest: a paho-mqtt 2.x client with a persistent session and manual acks.

QoS 1 messages are acknowledged only when the pipeline says they are durable (`ack`), so a
crash before that makes the broker deliver them again. The session is persistent
(MQTT 5 clean_start=False with a session expiry), so the broker queues what is published
while fabtier is down.

Over `mqtts://` the socket is paho's, wrapped in the `ssl.SSLContext` it is given (CA, client
certificate: `core.brokerconn`). A broker that cannot be reached, a failed TLS handshake or a
refused login is logged in words (the CONNACK reason, the TLS alert) and retried by paho's
network thread with backoff; `problem` holds the last one until the subscription is
confirmed.
"""

from __future__ import annotations

import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.brokerconn import apply_login, connection_problem, refusal_words
from core.errors import RetryableError
from ingest.readahead import ReadAheadClient

log = logging.getLogger("fabtier.ingest")

_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2), packet id
MessageHandler = Callable[[str, bytes, int, int], None]  # topic, payload, qos, mid
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 5  # paho doubles the wait between attempts up to the max


class _Client(ReadAheadClient):
    """The read-ahead client, telling `on_problem` why a connection failed: paho itself only
    logs that it failed (a TLS handshake error, a TLS alert on the first read)."""

    on_problem: Callable[[str], None] | None = None

    def _create_socket(self):
        try:
            return super()._create_socket()
        except OSError as exc:  # ssl.SSLError too; paho retries
            if self.on_problem is not None:
                self.on_problem(connection_problem(exc))
            raise

    def _easy_log(self, level, fmt, *args) -> None:
        if level == mqtt.MQTT_LOG_ERR and self.on_problem is not None and "socket" in fmt:
            self.on_problem(connection_problem(fmt % args))
        super()._easy_log(level, fmt, *args)


class Subscriber:
    def __init__(self, *, url: str, client_id: str, topics: list[str], on_message: MessageHandler,
                 username: str = "", password: str = "", tls: ssl.SSLContext | None = None,
                 session_expiry: float = 86400, keepalive: float = 30, receive_maximum: int = 1000) -> None:
        self._topics = topics
        self._handler = on_message
        self._session_expiry = int(session_expiry)
        self._receive_maximum = receive_maximum
        self._keepalive = max(5, int(keepalive))
        self.ready = threading.Event()
        self.connected = threading.Event()
        self.problem: str | None = None  # why the last attempt failed; None once subscribed
        self._failures = 0  # connection attempts failed in a row
        self.disconnected_ms: int | None = None  # when a connection that was up was lost
        self._client = _Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self._client.on_problem = self._on_problem
        self._host, self._port = apply_login(self._client, url=url, username=username, password=password, tls=tls)
        # paho's own queue of outgoing packets must not cap how many deliveries are in flight.
        self._client.max_inflight_messages_set(receive_maximum)
        self._client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
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

    def start(self, timeout: float | None = 10.0, cancel: threading.Event | None = None) -> bool:
        """Connect and subscribe; returns True once the broker confirmed the subscription.

        paho's thread connects and, after a failure or a refusal, tries again with backoff.
        Gives up (stops, raises RetryableError with the last problem) after `timeout`
        seconds; None waits as long as it takes. Returns False, stopped, once `cancel` is set.
        """
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive, clean_start=False,
                                   properties=self._connect_properties())
        self._client.loop_start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if cancel is not None and cancel.is_set():
                self.stop(flush_timeout=0)
                return False
            if deadline is not None and time.monotonic() >= deadline:
                self.stop(flush_timeout=0)
                raise RetryableError(f"the MQTT broker at {self._host}:{self._port} did not accept the subscription"
                                     + (f": {self.problem}" if self.problem else f" within {timeout:g} s"))
        return True

    def _on_problem(self, problem: str) -> None:
        self._failures += 1
        level = logging.INFO  # a repeat: logged, so that the retries show, but not as a new error
        if problem != self.problem or self._failures % 20 == 1:
            # A login or TLS problem needs an operator; a broker that is away (restarting) may not.
            level = logging.ERROR if problem.startswith(("TLS", "the broker refused")) else logging.WARNING
        log.log(level, "cannot connect to the MQTT broker at %s:%s (attempt %d): %s; trying again with backoff "
                "(up to %d s)", self._host, self._port, self._failures, problem, RECONNECT_MAX_S)
        self.problem = problem

    @property
    def failures(self) -> int:
        """Connection attempts failed in a row (0 once connected)."""
        return self._failures

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._on_problem(f"the broker refused the login: {refusal_words(reason_code)}")
            return
        self._failures = 0
        self.connected.set()
        log.info("connected to %s:%s (session present: %s)", self._host, self._port, flags.session_present)
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            self.problem = f"the broker refused the subscription: {', '.join(str(rc) for rc in failed)}"
            log.error("%s (topics %s)", self.problem, ", ".join(self._topics))
            return
        self.problem = None
        self.ready.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected:
            self.disconnected_ms = int(time.time() * 1000)
        if reason_code != 0 and was_connected:  # a failed attempt was logged as such (_on_problem)
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
        try:
            self._client.loop_stop()
        except AttributeError:
            # paho's network thread, ending on its own after the disconnect, can clear the
            # thread that loop_stop has just checked and is about to join (seen once in CI
            # after a broker restart): it has ended, which is what stop wants.
            pass
