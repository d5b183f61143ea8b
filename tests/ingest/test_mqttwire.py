"""PUBLISH packets split from a receive buffer; everything unusual is left to paho."""

from ingest.mqttwire import split_publishes


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int = 1, mid: int = 7, props: bytes | None = b"",
            flags: int = 0) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:  # MQTT 5: property length, then the properties
        body += _length(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1 | flags]) + _length(len(body)) + body


def test_splits_whole_packets_of_qos_0_and_1():
    buf = publish(b"fab/a/b", b"x" * 200, qos=1, mid=300) + publish(b"fab/c", b"{}", qos=0)
    out, pos = split_publishes(buf, 0, True, 100)
    assert out == [("fab/a/b", b"x" * 200, 1, 300), ("fab/c", b"{}", 0, 0)]
    assert pos == len(buf)


def test_mqtt_3_has_no_property_length():
    buf = publish(b"t", b"p", props=None)
    assert split_publishes(buf, 0, False, 10) == ([("t", b"p", 1, 7)], len(buf))


def test_retain_and_dup_flags_do_not_matter():
    buf = publish(b"t", b"p", flags=0x09)  # dup + retain
    assert split_publishes(buf, 0, True, 10)[0] == [("t", b"p", 1, 7)]


def test_stops_at_an_incomplete_packet():
    first, second = publish(b"t", b"a"), publish(b"t", b"b" * 300)
    buf = first + second[:-1]
    assert split_publishes(buf, 0, True, 10) == ([("t", b"a", 1, 7)], len(first))
    # a remaining length cut in the middle of its bytes
    assert split_publishes(second[:2], 0, True, 10) == ([], 0)


def test_leaves_what_paho_must_handle():
    ok = publish(b"t", b"a")
    unusual = [
        publish(b"t", b"a", qos=2),  # QoS 2: paho's PUBREC/PUBREL exchange
        publish(b"t", b"a", props=b"\x23\x00\x01"),  # a topic alias
        publish(b"\xff\xfe", b"a"),  # topic not UTF-8: paho reports it
        bytes([0x90, 3, 0, 1, 0]),  # SUBACK
        publish(b"t", b"a", mid=0),  # QoS 1 with packet id 0 is malformed
        publish(b"t", b"a", qos=3),  # QoS bits 3: malformed, paho drops the connection
    ]
    for packet in unusual:
        buf = ok + packet + ok
        assert split_publishes(buf, 0, True, 10) == ([("t", b"a", 1, 7)], len(ok)), packet


def test_limit_and_start_position():
    packets = [publish(b"t", bytes([i])) for i in range(5)]
    buf = b"".join(packets)
    out, pos = split_publishes(buf, len(packets[0]), True, 2)
    assert [p for _, p, _, _ in out] == [b"\x01", b"\x02"]
    assert pos == 3 * len(packets[0])


def test_body_shorter_than_its_header_is_left_alone():
    buf = bytes([0x32, 3, 0, 5, ord("t")])  # topic length 5 in a 3-byte body
    assert split_publishes(buf, 0, True, 10) == ([], 0)
