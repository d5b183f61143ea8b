"""The outbox: per-sink order, resumption after partial failures, cursors that survive restarts."""

from __future__ import annotations

import threading

from alerts.outbox import Outbox
from alerts.sinks import SinkError, alert_line, alert_payload, alert_topic
from core.records import AlertEvent
from tests.conftest import wait_for


def event(seq: int, state: str = "raised") -> AlertEvent:
    return AlertEvent(seq=seq, writer="w0", machine="etch-01", sensor="ch1/temp", ts=1_764_000_000_000 + seq,
                      value=85.0, kind="high", threshold=80.0, rule="overtemp", state=state, raised_at=1)


class FlakySink:
    """An in-memory sink that takes `accept` events per call and then fails, `fail_calls` times."""

    name = "flaky"
    timeout = 1.0

    def __init__(self, fail_calls: int = 0, accept: int = 0) -> None:
        self.fail_calls, self.accept = fail_calls, accept
        self.got: list[int] = []
        self.calls = 0
        self.lock = threading.Lock()

    def send(self, events):
        with self.lock:
            self.calls += 1
            if self.calls <= self.fail_calls:
                taken = events[: self.accept]
                self.got.extend(e.seq for e in taken)
                raise SinkError(len(taken), "down")
            self.got.extend(e.seq for e in events)
            return len(events)

    def close(self):
        pass


def test_failures_resume_after_what_was_delivered_in_order(tmp_path):
    sink = FlakySink(fail_calls=3, accept=1)
    outbox = Outbox(tmp_path, [sink], retry_min=0.001, retry_max=0.01)
    outbox.restore([], last_seq=0)
    outbox.start()
    outbox.push([event(i) for i in range(1, 6)])
    outbox.push([event(6, "cleared")])
    wait_for(lambda: len(sink.got) >= 6, what="every event")
    outbox.stop()
    assert sink.got == [1, 2, 3, 4, 5, 6]  # one taken per failed call, none twice
    assert outbox.metrics()["flaky"]["failures"] == 3
    assert (tmp_path / "flaky.cursor").read_text().strip() == "6"


def test_a_restart_queues_everything_after_the_cursor(tmp_path):
    events = [event(i) for i in range(1, 8)]
    first = FlakySink(fail_calls=10**6, accept=0)  # never delivers
    outbox = Outbox(tmp_path, [first], retry_min=0.001, retry_max=0.01)
    outbox.restore([], last_seq=0)
    outbox.start()
    outbox.push(events[:3])
    wait_for(lambda: first.calls >= 2, what="failed attempts")
    outbox.stop(grace=0.05)

    second = FlakySink()
    outbox = Outbox(tmp_path, [second], retry_min=0.001, retry_max=0.01)
    outbox.restore(events[:3], last_seq=3)  # the durable log holds 1..3, none delivered
    outbox.start()
    outbox.push(events[3:])
    wait_for(lambda: len(second.got) >= 7, what="every event")
    outbox.stop()
    assert second.got == [1, 2, 3, 4, 5, 6, 7]


def test_a_new_sink_starts_at_the_end_of_the_log(tmp_path):
    sink = FlakySink()
    outbox = Outbox(tmp_path, [sink], retry_min=0.001)
    outbox.restore([event(1), event(2)], last_seq=2)
    outbox.start()
    outbox.push([event(3)])
    wait_for(lambda: sink.got, what="the live event")
    outbox.stop()
    assert sink.got == [3]


def test_payload_and_log_line():
    e = event(7)
    payload = alert_payload(e)
    assert list(payload)[:9] == ["machine", "sensor", "ts", "value", "kind", "threshold", "rule", "state", "raised_at"]
    assert payload["id"] == "w0:7"
    assert alert_line(e).startswith("alert raised etch-01/ch1/temp rule=overtemp value=85 > 80 (high)")


def test_alert_topics_never_hold_wildcards():
    assert alert_topic("fab-alerts", event(1)) == "fab-alerts/etch-01/ch1/temp"
    odd = AlertEvent(**{**{f: getattr(event(1), f) for f in AlertEvent.__slots__}, "sensor": "ch#1/t+x"})
    assert alert_topic("fab-alerts", odd) == "fab-alerts/etch-01/ch_1/t_x"
