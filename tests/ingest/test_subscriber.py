"""The ingest subscriber against a real mosquitto: every delivery arrives once, whole, in
order, whichever way it is read (read-ahead split or paho's own), and unacknowledged ones
come back after a reconnect."""

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.subscriber import Subscriber
from tests.conftest import wait_for


class Received:
    def __init__(self):
        self.items: list[tuple[str, bytes, int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, topic, payload, qos, mid):
        with self.lock:
            self.items.append((topic, bytes(payload), qos, mid))


def _publisher(broker) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def _subscriber(broker, received, client_id="sub-under-test") -> Subscriber:
    sub = Subscriber(url=broker.url, client_id=client_id, topics=["fab/#"], on_message=received,
                     receive_maximum=65535)
    sub.start()
    return sub


def test_mixed_stream_arrives_once_and_whole(broker):
    received = Received()
    sub = _subscriber(broker, received)
    pub = _publisher(broker)
    with_props = Properties(PacketTypes.PUBLISH)
    with_props.UserProperty = ("origin", "test")
    expected = []
    for i in range(3000):
        topic, payload, qos, props = f"fab/m{i % 7}/s", f"{i}".encode(), 1, None
        if i % 500 == 1:
            payload = bytes(range(256)) * 1200  # 300 KiB: spans read-ahead buffers
        if i % 97 == 3:
            qos = 0
        if i % 211 == 5:
            qos = 2  # the subscription (QoS 1) delivers it at QoS 1
        if i % 173 == 9:
            props = with_props  # properties: paho's own parsing
        pub.publish(topic, payload, qos=qos, properties=props).wait_for_publish(10)
        expected.append((topic, payload, min(qos, 1)))
    wait_for(lambda: len(received.items) >= len(expected), what="all deliveries")
    got = [(t, p, q) for t, p, q, _ in received.items]
    assert got == expected  # one connection, one publisher: in order, none twice
    acks = [mid for _, _, q, mid in received.items if q == 1]
    assert len(set(acks)) > 1 and all(0 < mid < 65536 for mid in acks)
    sub.stop()
    pub.loop_stop()


def test_unacknowledged_messages_come_back(broker):
    received = Received()
    sub = _subscriber(broker, received)
    pub = _publisher(broker)
    for i in range(200):
        pub.publish("fab/m/s", str(i).encode(), qos=1).wait_for_publish(10)
    wait_for(lambda: len(received.items) == 200, what="first delivery")
    sub.ack_many([mid for _, _, _, mid in received.items[:150]])
    sub.stop()

    again = Received()
    sub = _subscriber(broker, again)
    wait_for(lambda: len(again.items) == 50, what="redelivery")
    assert [p for _, p, _, _ in again.items] == [str(i).encode() for i in range(150, 200)]
    sub.stop()
    pub.loop_stop()
