"""Read-ahead for paho's network loop.

paho reads each incoming packet with three or more `recv` calls (one byte of command, the
remaining length byte by byte, then the body) and goes back to `select` after every packet.
For a stream of small QoS 1 messages those system calls cost more than the message itself
(py-spy: `select` and `_sock_recv` were 40% of the network thread). `ReadAheadSocket` takes
whatever the kernel has in one `recv` and serves paho's small reads from memory;
`ReadAheadClient` keeps reading packets while that buffer holds any, instead of one packet
per `select`.

Only paho's documented socket contract is relied on: `recv`/`send`/`fileno`/`pending`
(`pending` is how paho already drains buffered TLS data without waiting in `select`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import paho.mqtt.client as mqtt

from ingest.mqttwire import Delivery, split_publishes

# Bytes asked of the kernel per recv. Below the 256 KiB from which an ingesting process gives
# each allocation a mapping of its own (fabtier.allocator): `recv(n)` allocates n bytes first,
# and at 256 KiB every call got fresh pages that the kernel faulted in and zeroed as it copied
# into them (~9 us a page on this kind of virtual machine; perf: `_copy_to_iter` took 46 % of
# the ingesting process's page faults at 4,000 sensors). Below it, malloc reuses freed memory.
READ_AHEAD = 252 * 1024
PACKETS_PER_WAKE = 256  # then back to the loop, so queued acknowledgements go out


if TYPE_CHECKING:  # paho defines SocketLike for type checkers only
    class _PendingSocket(mqtt.SocketLike, Protocol):
        def pending(self) -> int: ...


class ReadAheadSocket:
    """A socket whose `recv` reads ahead into a buffer; everything else is the socket's."""

    def __init__(self, sock, read_ahead: int = READ_AHEAD) -> None:
        self._sock = sock
        self._read_ahead = read_ahead
        self._buffer = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        available = len(self._buffer) - self._pos
        if available == 0:
            # Never more than `read_ahead` of the kernel, whatever paho asks: paho asks for a
            # packet's whole declared remaining length (up to 256 MiB, from the wire), and
            # `recv(n)` allocates n bytes first. paho reads the rest in further calls.
            data = self._sock.recv(self._read_ahead)  # BlockingIOError passes through
            if len(data) <= size:
                return data  # b"" is the peer closing: paho must see it
            self._buffer, self._pos, available = data, 0, len(data)
        take = min(size, available)
        chunk = self._buffer[self._pos:self._pos + take]
        self._pos += take
        return chunk

    def take_publishes(self, mqtt5: bool, limit: int) -> list[Delivery]:
        """The whole PUBLISH packets at the front of the buffer (see `split_publishes`)."""
        if self._pos == len(self._buffer):
            return []
        deliveries, self._pos = split_publishes(self._buffer, self._pos, mqtt5, limit)
        return deliveries

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buffer) - self._pos + inner

    def __getattr__(self, name: str):
        return getattr(self._sock, name)  # send, fileno, setblocking, close, ...


class ReadAheadClient(mqtt.Client):
    """paho's client over a `ReadAheadSocket` (TCP and TLS; websockets stay as paho has them).

    With `deliver` set, QoS 0/1 PUBLISH packets that sit whole in the read-ahead buffer go
    straight to it as (topic, payload, qos, mid), instead of through `on_message`: the
    same call paho would make, minus the `MQTTMessage`. Acknowledging stays the caller's
    (manual_ack), exactly as with paho.
    """

    deliver: Callable[[str, bytes, int, int], None] | None = None
    # What `_create_socket` makes: a ReadAheadSocket, or paho's websocket wrapper, which has
    # `pending` too (paho's SocketLike leaves it out). An annotation only: no class attribute.
    _sock: _PendingSocket | None

    def _create_socket(self):
        sock = super()._create_socket()
        if self._transport == "websockets":
            return sock
        return ReadAheadSocket(sock)

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        sock = self._sock
        if self.deliver is not None and self._in_packet["command"] == 0 and isinstance(sock, ReadAheadSocket):
            deliveries = sock.take_publishes(self._protocol == mqtt.MQTTv5, PACKETS_PER_WAKE)
            if deliveries:
                deliver = self.deliver
                for topic, payload, qos, mid in deliveries:
                    deliver(topic, payload, qos, mid)
                with self._msgtime_mutex:  # paho's keepalive watches this
                    self._last_bytes_received = mqtt.time_func()
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._packet_read()

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        for _ in range(PACKETS_PER_WAKE):
            sock = self._sock
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None or not sock.pending():
                break
            rc = super().loop_read(max_packets)
        return rc
