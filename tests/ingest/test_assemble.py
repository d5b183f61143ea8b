import json

from ingest.assemble import assemble
from ingest.codec import Limits, SingleReading

NOW = 1_764_000_000_000
LIMITS = Limits(max_future_ms=60_000, max_late_ms=86_400_000, max_payload=1 << 20)


def run(*messages):
    return assemble(list(messages), readings_root="fab", context_prefix="fab-ctx/", now_ms=NOW, limits=LIMITS)


def test_messages_are_sorted_by_what_they_carry_and_qos1_ids_are_kept():
    out = run(
        ("fab/m1/ch1/temp", b'{"ts": %d, "v": 1.5}' % NOW, 1, 7),
        ("fab/m1/ch1/temp", b'{"ts": "2025-11-24T16:00:00.001Z", "v": 2}', 0, 0),
        ("fab/m2", json.dumps({"ts": [NOW, NOW], "sensor": ["a", "b"], "v": [1, 2.5]}).encode(), 1, 8),
        ("fab-ctx/m1", json.dumps({"ts": NOW, "event": "start", "lot": "L1", "wafer": "W1",
                                   "recipe": "R"}).encode(), 1, 9),
        ("fab/m1/ch1/temp", b'{"ts": %d, "v": NaN}' % NOW, 1, 10),
    )
    assert out.tokens == [7, 8, 9, 10]
    assert out.singles == [("m1", "ch1/temp", NOW, 1.5), ("m1", "ch1/temp", NOW + 1, 2.0)]
    assert all(isinstance(s, SingleReading) for s in out.singles)
    assert [b.machine for b in out.batches] == ["m2"] and out.batches[0].value.tolist() == [1.0, 2.5]
    assert [e.lot for e in out.context] == ["L1"]
    assert [(q.topic, "not valid JSON" in q.reason) for q in out.quarantine] == [("fab/m1/ch1/temp", True)]


def test_single_reading_fast_path_keeps_every_check():
    bad = [
        (b'{"ts": %d, "v": true}' % NOW, "v must be a number"),
        (b'{"ts": %d, "v": 1.0, "x": 1}' % NOW, "unknown field x"),
        (b'{"ts": %d, "v": 1.0}' % (NOW + 120_000), "max_future"),
        (b'{"ts": %d, "v": 1.0}' % (NOW - 2 * 86_400_000), "max_late"),
        (b'{"ts": [%d], "sensor": ["a"], "v": [1.0]}' % NOW, "batch on a single-reading topic"),
        (b'{"ts": %d.0, "v": 1.0}' % NOW, "ts must be epoch milliseconds"),
    ]
    out = run(*[("fab/m/s", payload, 1, i) for i, (payload, _) in enumerate(bad)])
    assert not out.singles
    assert len(out.quarantine) == len(bad)
    assert all(reason in q.reason for q, (_, reason) in zip(out.quarantine, bad, strict=True))
