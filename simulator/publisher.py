"""The simulator's I/O: publishes the fab model to an MQTT broker in real time.

`run_simulator` paces the model on the wall clock and publishes each tick's readings and
context events; with QoS 1 it keeps at most `max_inflight` publishes unacknowledged (so the
16-bit message-id space is never exhausted and paho's queue never overflows) and returns
only once the broker has acknowledged every one of them: every reading counted in
`SimStats.readings` was accepted by the broker.

`generate_messages` is the same stream without clock or network, for tests and benchmarks.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from core.brokerconn import connection_problem, refusal_words

from .model import FabModel, SimConfig
from .payloads import Message, messages

TICK_S = 0.02
MAX_STEP_MS = 1000  # when publishing falls behind, catch up in steps of at most this much
CONNECT_TIMEOUT_S = 10.0
ACK_TIMEOUT_S = 60.0  # no acknowledgement for this long: the broker is considered gone


class BrokerError(ConnectionError):
    """The broker cannot be reached, refuses us, or stops acknowledging publishes."""


@dataclass
class SimStats:
    messages: int = 0
    readings: int = 0
    context_events: int = 0
    seconds: float = 0.0  # wall-clock duration of the run
    start_ms: int = 0  # simulated span [start_ms, end_ms) that was published
    end_ms: int = 0


def generate_messages(config: SimConfig, start_ms: int, end_ms: int, batch: int = 100,
                      topic_root: str = "fab", ctx_root: str = "fab-ctx", *,
                      step_ms: int = 1000) -> Iterator[Message]:
    """Every message of the span [start_ms, end_ms), deterministically and as fast as possible."""
    model = FabModel(config, start_ms)
    t = start_ms
    while t < end_ms:
        t = min(t + step_ms, end_ms)
        blocks, events = model.advance(t)
        yield from messages(blocks, events, batch=batch, topic_root=topic_root, ctx_root=ctx_root)


def parse_broker_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """`mqtt://[user[:password]@]host[:port]` or `mqtts://...` -> (host, port, tls, user, pw)."""
    parts = urlsplit(url)
    tls = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}.get(parts.scheme)
    try:
        _ = parts.port
    except ValueError:
        tls = None
    if tls is None or not parts.hostname:
        shown = re.sub(r"//[^/@]*@", "//***@", url)  # never a password in a message
        raise ValueError(f"broker URL must look like mqtt://host:port or mqtts://host:port, "
                         f"got {shown!r}")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, parts.port or (8883 if tls else 1883), tls, user, password


class _Throttle:
    """Counts publishes not yet acknowledged; `acquire` blocks while `limit` are out."""

    def __init__(self, limit: int):
        self.limit, self.out = limit, 0
        self.cond = threading.Condition()

    def acquire(self) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.out < self.limit, ACK_TIMEOUT_S):
                raise BrokerError(f"broker acknowledged nothing for {ACK_TIMEOUT_S:g} s")
            self.out += 1

    def release(self, *_args) -> None:
        with self.cond:
            self.out -= 1
            self.cond.notify_all()

    def drain(self) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.out == 0, ACK_TIMEOUT_S):
                raise BrokerError(f"{self.out} publishes still unacknowledged "
                                  f"after {ACK_TIMEOUT_S:g} s")


def _connect(url: str, *, qos_limit: int, username: str | None, password: str | None,
             throttle: _Throttle, tls_context: ssl.SSLContext | None = None) -> mqtt.Client:
    host, port, tls, url_user, url_password = parse_broker_url(url)
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"fabtier-sim-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv311, clean_session=True)
    if tls:
        # A context from core.brokerconn.tls_context carries the CA and client certificate.
        client.tls_set_context(tls_context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    user, pw = username or url_user, password or url_password
    if user:
        client.username_pw_set(user, pw)
    client.max_inflight_messages_set(qos_limit)
    client.max_queued_messages_set(0)  # unbounded: the throttle bounds it
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c, _u, _flags, reason_code, _props):
        if reason_code.is_failure:
            refused.append(refusal_words(reason_code))
        connected.set()

    client.on_connect = on_connect
    client.on_publish = throttle.release
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ssl.SSLError) as e:
        raise BrokerError(f"cannot reach MQTT broker at {host}:{port}: {connection_problem(e)}") from None
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S) or refused:
        client.loop_stop()
        client.disconnect()
        why = refused[0] if refused else f"no CONNACK within {CONNECT_TIMEOUT_S:g} s"
        raise BrokerError(f"MQTT broker at {host}:{port} refused the connection: {why}")
    return client


def run_simulator(*, broker_url: str = "mqtt://127.0.0.1:1883", machines: int = 4,
                  sensors: int = 5, rate_hz: float = 10.0, batch: int = 100,
                  seconds: float | None = None, seed: int = 0, topic_root: str = "fab",
                  ctx_root: str = "fab-ctx", qos: int = 1, max_inflight: int = 1000,
                  stop: threading.Event | None = None, start_ms: int | None = None,
                  on_progress: Callable[[SimStats], None] | None = None,
                  username: str | None = None, password: str | None = None,
                  tls: ssl.SSLContext | None = None,
                  excursion_rate: float | None = None,
                  fault_rate: float | None = None) -> SimStats:
    """Publish the simulated fab in real time until `seconds` have passed or `stop` is set.

    The simulated clock starts at `start_ms` (default: now) and advances with the wall clock.
    `on_progress(stats)` gets a snapshot about once a second, from this thread. Raises `BrokerError`
    when the broker cannot be reached or stops acknowledging.
    """
    if qos not in (0, 1):
        raise ValueError("qos must be 0 or 1")
    if not 1 <= max_inflight <= 65000:
        raise ValueError("max_inflight must be in 1..65000 (MQTT message ids are 16-bit)")
    # None: SimConfig's default
    config = SimConfig(
        machines=machines, sensors_per_machine=sensors, rate_hz=rate_hz, seed=seed,
        excursion_rate=SimConfig.excursion_rate if excursion_rate is None else excursion_rate,
        fault_rate=SimConfig.fault_rate if fault_rate is None else fault_rate)
    stop = stop or threading.Event()
    throttle = _Throttle(max_inflight)
    client = _connect(broker_url, qos_limit=max_inflight, username=username, password=password,
                      throttle=throttle, tls_context=tls)
    began = time.monotonic()
    start = int(time.time() * 1000) if start_ms is None else int(start_ms)
    end = None if seconds is None else start + round(seconds * 1000)
    model = FabModel(config, start)
    stats = SimStats(start_ms=start, end_ms=start)
    last_progress = began
    try:
        while not stop.is_set() and (end is None or stats.end_ms < end):
            now = start + int((time.monotonic() - began) * 1000)
            target = min(now, stats.end_ms + MAX_STEP_MS, end if end is not None else now)
            if target > stats.end_ms:
                blocks, events = model.advance(target)
                # a tick is published whole, so the published data is exactly a time prefix
                for topic, payload in messages(blocks, events, batch=batch, topic_root=topic_root,
                                               ctx_root=ctx_root):
                    throttle.acquire()
                    info = client.publish(topic, payload, qos=qos)
                    # QoS 1 while disconnected: paho keeps it and sends it after reconnecting
                    if info.rc != mqtt.MQTT_ERR_SUCCESS and not (
                            qos == 1 and info.rc == mqtt.MQTT_ERR_NO_CONN):
                        throttle.release()  # never queued, so no on_publish will come
                        raise BrokerError(f"publish failed: {mqtt.error_string(info.rc)}")
                    stats.messages += 1
                stats.readings += sum(len(b) for b in blocks)
                stats.context_events += len(events)
                stats.end_ms = target
            if on_progress is not None and time.monotonic() - last_progress >= 1.0:
                last_progress = time.monotonic()
                stats.seconds = last_progress - began
                on_progress(replace(stats))
            if target >= now:  # caught up with the wall clock
                stop.wait(TICK_S)
        throttle.drain()
    finally:
        client.disconnect()
        client.loop_stop()
    stats.seconds = time.monotonic() - began
    return stats


def publish_stream(stream: Iterator[Message], *, broker_url: str, qos: int = 1,
                   max_inflight: int = 1000, on_first: Callable[[], None] | None = None,
                   username: str | None = None, password: str | None = None,
                   tls: ssl.SSLContext | None = None) -> tuple[int, float]:
    """Publish a ready stream as fast as the broker takes it (for benchmarks).

    Returns (messages, seconds from the first publish until the broker acknowledged the last).
    `on_first` runs just before the first publish, so a caller can start its own clock there.
    """
    throttle = _Throttle(max_inflight)
    client = _connect(broker_url, qos_limit=max_inflight, username=username, password=password,
                      throttle=throttle, tls_context=tls)
    count = 0
    began = None
    try:
        for topic, payload in stream:
            if began is None:
                if on_first is not None:
                    on_first()
                began = time.monotonic()
            throttle.acquire()  # paho reports QoS 0 publishes too, once they are written
            info = client.publish(topic, payload, qos=qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                throttle.release()
                raise BrokerError(f"publish failed: {mqtt.error_string(info.rc)}")
            count += 1
        throttle.drain()
    finally:
        client.disconnect()
        client.loop_stop()
    return count, (time.monotonic() - began) if began is not None else 0.0
