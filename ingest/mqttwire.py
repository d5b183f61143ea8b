"""MQTT PUBLISH packets parsed straight from a receive buffer (pure, no I/O).

paho builds an `MQTTMessage`, a `Properties` object and a topic-matcher walk for every
message; for a stream of single readings that is most of the network thread's time. The
ingest path needs only topic, payload, QoS and packet id, so whole QoS 0/1 PUBLISH packets
without properties are split here in one pass. Anything else (another packet type, QoS 2,
MQTT 5 properties such as a topic alias, a topic that is not UTF-8, QoS bits 3, an incomplete
packet)
stops the split: paho then reads that packet its own way.
"""

from __future__ import annotations

PUBLISH = 0x30

Delivery = tuple[str, bytes, int, int]  # topic, payload, qos, packet id (0 for QoS 0)


def split_publishes(buf: bytes, pos: int, mqtt5: bool, limit: int) -> tuple[list[Delivery], int]:
    """Whole PUBLISH packets from buf[pos:], at most `limit`; returns them and the new position."""
    out: list[Delivery] = []
    end = len(buf)
    while len(out) < limit and end - pos >= 2:
        header = buf[pos]
        qos = (header >> 1) & 3
        if header & 0xF0 != PUBLISH or qos >= 2:  # 3 is malformed: paho refuses it
            break
        # Remaining length: 1 to 4 bytes, 7 bits each, least significant first.
        length = shift = 0
        i = pos + 1
        while True:
            if i >= end or i - pos > 4:
                return out, pos
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
        body_end = i + length
        if body_end > end or length < 2:
            break
        topic_end = i + 2 + (buf[i] << 8 | buf[i + 1])
        at = topic_end
        mid = 0
        if qos:
            mid = buf[at] << 8 | buf[at + 1] if at + 2 <= body_end else -1
            at += 2
        if mqtt5:
            if at >= body_end or buf[at] != 0:  # properties present (or malformed): paho's way
                break
            at += 1
        if at > body_end or mid == -1 or (qos and mid == 0):
            break
        try:
            topic = buf[i + 2:topic_end].decode("utf-8")
        except UnicodeDecodeError:
            break
        out.append((topic, buf[at:body_end], qos, mid))
        pos = body_end
    return out, pos
