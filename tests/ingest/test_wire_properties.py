"""Bad input for the MQTT wire reader (issue 14), by hypothesis: `split_publishes` and the
read-ahead client over byte streams cut at arbitrary points.

Properties: the splitter never raises, takes exactly the plain PUBLISH packets a reference
parser takes and leaves everything else where it is; through `ReadAheadClient` (paho's own
`_packet_read` for what the splitter leaves) every packet of a stream arrives once and in
order however the stream is cut, so an unusual packet never keeps the good ones behind it
from arriving; a declared huge length or a broken remaining length buffers nothing beyond
one read-ahead.
"""

from __future__ import annotations

import os

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest.mqttwire import split_publishes
from ingest.readahead import ReadAheadClient, ReadAheadSocket

settings.register_profile("bad-input", max_examples=int(os.environ.get("FABTIER_BAD_INPUT_EXAMPLES", "150")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
BAD_INPUT = settings.get_profile("bad-input")

MAX_REMAINING = 268_435_455  # the largest remaining length four bytes can say


# ---- packets ------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, *, qos: int, mid: int, mqtt5: bool, props: bytes = b"",
            flags: int = 0) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if mqtt5:
        body += varint(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1 | flags]) + varint(len(body)) + body


def read_packet(buf: bytes, pos: int) -> tuple[int, bytes, int] | None:
    """(command, body, end) of the packet at `pos` as the protocol frames it; None when it is
    cut short or its remaining length is longer than four bytes."""
    if pos >= len(buf):
        return None
    length, i = 0, pos + 1
    for n in range(4):
        if i >= len(buf):
            return None
        byte = buf[i]
        length += (byte & 0x7F) << (7 * n)
        i += 1
        if not byte & 0x80:
            break
    else:
        return None
    if i + length > len(buf):
        return None
    return buf[pos], buf[i:i + length], i + length


def plain_publish(command: int, body: bytes, mqtt5: bool) -> tuple[str, bytes, int, int] | None:
    """The delivery a plain QoS 0/1 PUBLISH without properties carries, else None."""
    qos = command >> 1 & 3
    if command & 0xF0 != 0x30 or qos > 1 or len(body) < 2:
        return None
    at = 2 + int.from_bytes(body[:2], "big")
    topic = body[2:at]
    if at > len(body):
        return None
    mid = 0
    if qos:
        if at + 2 > len(body):
            return None
        mid, at = int.from_bytes(body[at:at + 2], "big"), at + 2
        if mid == 0:
            return None
    if mqtt5:
        if at >= len(body) or body[at] != 0:
            return None
        at += 1
    try:
        return topic.decode("utf-8"), body[at:], qos, mid
    except UnicodeDecodeError:
        return None


def reference_split(buf: bytes, pos: int, mqtt5: bool, limit: int):
    out = []
    while len(out) < limit:
        packet = read_packet(buf, pos)
        delivery = packet and plain_publish(packet[0], packet[1], mqtt5)
        if not packet or not delivery:
            break
        out.append(delivery)
        pos = packet[2]
    return out, pos


topic_bytes = st.text(min_size=1, max_size=20).map(str.encode)
good_packets = st.builds(
    lambda topic, payload, qos, mid, flags: (topic, payload, qos, mid, flags),
    topic_bytes, st.binary(max_size=300), st.integers(0, 1), st.integers(1, 65535), st.sampled_from([0, 1, 8, 9]))


@st.composite
def packet(draw, mqtt5: bool) -> bytes:
    """A framed packet: mostly plain publishes, some that the splitter leaves to paho."""
    topic, payload, qos, mid, flags = draw(good_packets)
    kind = draw(st.sampled_from(["good"] * 6 + ["qos2", "qos3", "props", "latin1", "mid0", "short", "other",
                                                  "nonminimal"]))
    if kind == "qos2":
        return publish(topic, payload, qos=2, mid=mid, mqtt5=mqtt5)
    if kind == "qos3":
        return publish(topic, payload, qos=3, mid=mid, mqtt5=mqtt5)
    if kind == "props" and mqtt5:
        return publish(topic, payload, qos=qos, mid=mid, mqtt5=True, props=b"\x23\x00\x01")  # a topic alias
    if kind == "latin1":
        return publish(b"\xff" + topic, payload, qos=qos, mid=mid, mqtt5=mqtt5)
    if kind == "mid0":
        return publish(topic, payload, qos=1, mid=0, mqtt5=mqtt5)
    if kind == "short":  # a topic length past the end of the body
        return bytes([0x32, 3, 0, 5, ord("t")])
    if kind == "other":
        return draw(st.sampled_from([b"\xd0\x00", b"\x90\x03\x00\x01\x00", b"\x40\x02\x00\x07", b"\x62\x02\x00\x01",
                                     b"\xe0\x00"]))
    good = publish(topic, payload, qos=qos, mid=mid, mqtt5=mqtt5, flags=flags)
    if kind == "nonminimal":  # remaining length padded with a continuation byte: still framed
        command, body, _ = read_packet(good, 0)
        length = varint(len(body))
        if len(length) < 4:
            return bytes([command]) + length[:-1] + bytes([length[-1] | 0x80, 0]) + body
    return good


# ---- the splitter alone ---------------------------------------------------------------------
@BAD_INPUT
@given(buf=st.binary(max_size=400), pos=st.integers(0, 10), mqtt5=st.booleans(), limit=st.integers(1, 300))
@example(buf=b"\x30\xff\xff\xff\xff\x01", pos=0, mqtt5=True, limit=10)  # a remaining length of five bytes
@example(buf=b"\x32\xff\xff\xff\x7f\x00\x01t\x00\x01", pos=0, mqtt5=False, limit=10)  # 256 MiB declared
@example(buf=b"\x30\x02\x00\x05", pos=0, mqtt5=False, limit=10)  # topic longer than the body
@example(buf=b"\x32\x03\x00\x01t", pos=0, mqtt5=False, limit=10)  # QoS 1 without its packet id
def test_splitter_on_arbitrary_bytes_takes_what_the_reference_takes(buf, pos, mqtt5, limit):
    pos = min(pos, len(buf))
    assert split_publishes(buf, pos, mqtt5, limit) == reference_split(buf, pos, mqtt5, limit)


@BAD_INPUT
@given(data=st.data(), mqtt5=st.booleans(), cut=st.integers(0, 4000))
def test_splitter_on_framed_streams_cut_anywhere(data, mqtt5, cut):
    stream = b"".join(data.draw(st.lists(packet(mqtt5), max_size=12)))
    buf = stream[:min(cut, len(stream))]
    out, pos = split_publishes(buf, 0, mqtt5, 1000)
    assert (out, pos) == reference_split(buf, 0, mqtt5, 1000)
    assert pos == len(buf) or read_packet(buf, pos) is None or not plain_publish(*read_packet(buf, pos)[:2], mqtt5)


# ---- through the read-ahead client and paho's own reader -------------------------------------
class ChunkedSocket:
    """A non-blocking socket whose bytes arrive in the given chunks: a `recv` returns no more
    than what has arrived, and between two chunks one `recv` finds nothing yet."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = [c for c in chunks if c]
        self.at = 0  # in the current chunk
        self.waited = False
        self.asked: list[int] = []

    def close(self) -> None:  # paho closes its socket when the client is collected
        self.chunks = []

    @property
    def done(self) -> bool:
        return not self.chunks

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        if not self.chunks or (self.at == 0 and not self.waited and len(self.asked) > 1):
            self.waited = True
            raise BlockingIOError
        self.waited = False
        chunk = self.chunks[0]
        data = chunk[self.at:self.at + size]
        self.at += len(data)
        if self.at == len(chunk):
            self.chunks.pop(0)
            self.at = 0
        return data


class RecordingClient(ReadAheadClient):
    """The read-ahead client with paho's packet handling replaced by a record of each packet."""

    def __init__(self, mqtt5: bool) -> None:
        super().__init__(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311)
        self.events: list[tuple] = []
        self.mqtt5 = mqtt5
        self.deliver = lambda topic, payload, qos, mid: self.events.append(("split", topic, payload, qos, mid))

    def _packet_handle(self) -> mqtt.MQTTErrorCode:
        self.events.append(("paho", self._in_packet["command"], bytes(self._in_packet["packet"])))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


def run_stream(chunks: list[bytes], mqtt5: bool, read_ahead: int):
    """Feed the chunks through `RecordingClient._packet_read` as paho's loop would; returns the
    client, the socket, the last return code and the largest read-ahead buffer seen."""
    client = RecordingClient(mqtt5)
    raw = ChunkedSocket(chunks)
    sock = ReadAheadSocket(raw, read_ahead=read_ahead)
    client._sock = sock  # type: ignore[assignment]
    rc, largest, idle = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, 0, 0
    for _ in range(10 * sum(map(len, chunks)) + 100):
        rc = client._packet_read()
        largest = max(largest, len(sock._buffer))
        if rc not in (mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, mqtt.MQTTErrorCode.MQTT_ERR_AGAIN):
            break  # paho drops the connection
        idle = idle + 1 if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN and raw.done and not sock.pending() else 0
        if idle >= 2:
            break
    else:
        raise AssertionError("the reader did not settle")
    return client, raw, sock, rc, largest


def as_events(stream: bytes, mqtt5: bool) -> list[tuple]:
    """What a reader must report for a framed stream: each packet once, in order; a plain
    publish as its delivery, however it was read."""
    events, pos = [], 0
    while (framed := read_packet(stream, pos)) is not None:
        command, body, pos = framed
        delivery = plain_publish(command, body, mqtt5)
        events.append(("publish", *delivery) if delivery else ("other", command, body))
    return events


def normalised(client: RecordingClient) -> list[tuple]:
    out = []
    for event in client.events:
        if event[0] == "split":
            out.append(("publish", *event[1:]))
        else:
            delivery = plain_publish(event[1], event[2], client.mqtt5)
            out.append(("publish", *delivery) if delivery else ("other", event[1], event[2]))
    return out


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({0, len(stream), *(p % (len(stream) + 1) for p in points)})
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@BAD_INPUT
@given(data=st.data(), mqtt5=st.booleans(), points=st.lists(st.integers(0, 10**6), max_size=12),
       read_ahead=st.sampled_from([1, 7, 64, 4096]))
def test_every_packet_arrives_once_in_order_however_the_stream_is_cut(data, mqtt5, points, read_ahead):
    packets = data.draw(st.lists(packet(mqtt5), max_size=12))
    stream = b"".join(packets)
    client, raw, sock, rc, largest = run_stream(cut(stream, points), mqtt5, read_ahead)
    assert rc in (mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, mqtt.MQTTErrorCode.MQTT_ERR_AGAIN)
    assert normalised(client) == as_events(stream, mqtt5)
    assert largest <= read_ahead and max(raw.asked, default=0) <= read_ahead


@BAD_INPUT
@given(data=st.data(), mqtt5=st.booleans(), garbage=st.binary(min_size=1, max_size=200),
       points=st.lists(st.integers(0, 10**6), max_size=8))
@example(data=None, mqtt5=True, garbage=b"\x30\xff\xff\xff\xff\x01", points=[3])  # five length bytes
@example(data=None, mqtt5=False, garbage=b"\x32\xff\xff\xff\x7f" + b"\x00" * 100, points=[])  # 256 MiB declared
def test_garbage_after_good_packets_leaves_them_delivered_and_buffers_nothing_more(data, mqtt5, garbage, points):
    good = data.draw(st.lists(packet(mqtt5), max_size=6)) if data is not None else []
    stream = b"".join(good) + garbage
    read_ahead = 64
    client, raw, sock, rc, largest = run_stream(cut(stream, points), mqtt5, read_ahead)
    prefix = as_events(b"".join(good), mqtt5)
    assert normalised(client)[:len(prefix)] == prefix
    # Memory stays bounded: one read-ahead at most, and paho holds no more than what arrived.
    assert largest <= read_ahead and max(raw.asked, default=0) <= read_ahead
    assert len(client._in_packet["packet"]) <= len(garbage)
    if rc == mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL:
        assert len(client._in_packet["remaining_count"]) > 4  # a broken remaining length: paho disconnects


def test_a_declared_huge_length_is_never_asked_of_the_kernel():
    """256 MiB declared, 100 bytes sent: the kernel is asked for one read-ahead at a time."""
    header = b"\x32\xff\xff\xff\x7f"
    good = publish(b"fab/m/s", b'{"ts": 1, "v": 1}', qos=1, mid=9, mqtt5=True)
    client, raw, sock, rc, largest = run_stream([good + header, b"\x00" * 100], True, 4096)
    assert normalised(client) == [("publish", "fab/m/s", b'{"ts": 1, "v": 1}', 1, 9)]
    assert client._in_packet["to_process"] == MAX_REMAINING - 100
    assert max(raw.asked) <= 4096 and largest <= 4096
