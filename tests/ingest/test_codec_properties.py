"""Bad input for the payload codec and the micro-batch assembly (issue 14), by hypothesis.

Properties: no payload or topic makes `decode_*` raise anything but `PayloadError` (with a
reason); a single reading is accepted exactly when a plain reference of the contract's rules
accepts it, with the same numbers; `assemble` never raises, sorts every message into exactly
one place, and a bad message never keeps the good ones around it from being decoded.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest import codec
from ingest.assemble import QUARANTINE_PAYLOAD_LIMIT, assemble, payload_text
from ingest.codec import (
    ContextEvent,
    Limits,
    PayloadError,
    ReadingBatch,
    SingleReading,
    decode_context,
    decode_message,
    decode_readings,
)
from ingest.walformat import SEGMENT_MAGIC, decode_records, encode_quarantine

# A profile of its own, so that the counts stay moderate in CI; FABTIER_BAD_INPUT_EXAMPLES
# raises them for a deeper run on a workstation.
settings.register_profile("bad-input", max_examples=int(os.environ.get("FABTIER_BAD_INPUT_EXAMPLES", "150")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
BAD_INPUT = settings.get_profile("bad-input")

NOW = 1_764_000_000_000
LIMITS = Limits(max_future_ms=15 * 60_000, max_late_ms=7 * 86_400_000, max_payload=4096)
ROOT, CTX = "fab", "fab-ctx"
INT64_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ---- strategies -------------------------------------------------------------------------
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/+#\x00"), min_size=1, max_size=12)
good_ts = st.integers(NOW - LIMITS.max_late_ms, NOW + LIMITS.max_future_ms)
good_v = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)

huge_ints = st.sampled_from([INT64_MAX, INT64_MAX + 1, -INT64_MAX, -INT64_MAX - 1, 2**64 - 1, 2**64, 10**30, -(10**30)])
json_scalars = (st.none() | st.booleans() | st.integers() | huge_ints | st.floats()  # NaN and inf too
                | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)
iso_ts = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                      timezones=st.none() | st.just(UTC) | st.builds(
                          timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                                                  max_value=timedelta(hours=23, minutes=59)))).map(
    lambda d: d.isoformat())
near_window = st.integers(NOW - LIMITS.max_late_ms - 5, NOW + LIMITS.max_future_ms + 5)
any_ts = (good_ts | near_window | huge_ints | iso_ts | json_values
          | good_ts.map(lambda t: (_EPOCH + timedelta(milliseconds=t)).isoformat()))
any_v = good_v | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, True, False, "1.0", None]) | json_values


def deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@st.composite
def near_valid_single(draw) -> bytes:
    """A single-reading document with its fields replaced, dropped, added to or nested deep."""
    doc: dict = {"ts": draw(any_ts), "v": draw(any_v)}
    if draw(st.booleans()):
        del doc[draw(st.sampled_from(["ts", "v"]))]
    if draw(st.integers(0, 4)) == 0:
        doc[draw(st.sampled_from(["sensor", "unit", "V", ""]))] = draw(json_values)
    text = json.dumps(doc, allow_nan=True)  # NaN and Infinity: not JSON, as the contract says
    if draw(st.integers(0, 6)) == 0:
        text = text.replace("{", "{" + f'"x": {deep(draw(st.integers(1, 3000)))}, ', 1)
    return text.encode()


@st.composite
def near_valid_batch(draw) -> bytes:
    n = draw(st.integers(0, 5))
    doc: dict = {"ts": draw(st.lists(any_ts, min_size=n, max_size=n) | any_ts),
                 "sensor": draw(st.lists(names | json_values, min_size=n, max_size=n) | json_values),
                 "v": draw(st.lists(any_v, min_size=n, max_size=n) | any_v)}
    for key in draw(st.sets(st.sampled_from(["ts", "sensor", "v"]), max_size=1)):
        del doc[key]
    if draw(st.integers(0, 4)) == 0:
        doc["extra"] = draw(json_values)
    return json.dumps(doc, allow_nan=True).encode()


@st.composite
def good_batch(draw) -> tuple[bytes, list[tuple[str, int, float]]]:
    n = draw(st.integers(1, 6))
    rows = [(draw(names), draw(good_ts), draw(good_v)) for _ in range(n)]
    doc = {"ts": [t for _, t, _ in rows], "sensor": [s for s, _, _ in rows], "v": [v for _, _, v in rows]}
    return json.dumps(doc).encode(), [(s, t, float(v)) for s, t, v in rows]


topic_shapes = st.sampled_from([
    "fab", "fab/", "fab//", "fab/m", "fab/m/", "fab//s", "fab/m//s", "fab/m/s/", "fab/m/s", "fab/m/a/b/c",
    "fab-ctx", "fab-ctx/", "fab-ctx/m", "fab-ctx/m/s", "fabx/m/s", "fa", "", "/", "fab/" + "m" * 300,
    "fab/m/" + "s" * 300, "fab/m/" + "é" * 200, "fab/\u2028/s", "fab/ /s", "fab/m/ ",
])
topics = topic_shapes | st.text(max_size=30) | st.builds(lambda a, b: f"{a}/{b}", topic_shapes, st.text(max_size=10))
payloads = st.binary(max_size=200) | near_valid_single() | near_valid_batch() | st.sampled_from([
    b"", b"null", b"[]", b"{}", b"\xff\xfe", b"{" * 5000, deep(100_000).encode(), b'{"ts": 1, "v": 1}' * 300,
])


# ---- a plain reference of the rules for one reading ----------------------------------------
def reference_single(payload: bytes) -> tuple[int, float] | None:
    """(ts, value) when the contract accepts `payload` on a single-reading topic, else None."""
    if len(payload) > LIMITS.max_payload:
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or set(doc) != {"ts", "v"}:
        return None
    ts, v = doc["ts"], doc["v"]
    if type(v) not in (int, float) or not math.isfinite(v):
        return None
    if type(ts) is str:
        try:
            moment = datetime.fromisoformat(ts)
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None
        ts = (moment - _EPOCH) // timedelta(milliseconds=1)
    elif type(ts) is not int:
        return None
    if not NOW - LIMITS.max_late_ms <= ts <= NOW + LIMITS.max_future_ms:
        return None
    return ts, float(v)


def _outcome(call):
    """What a decode call did: ("ok", result) or ("bad", reason); anything else propagates."""
    try:
        return "ok", call()
    except PayloadError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return "bad", exc.reason


# ---- the codec ----------------------------------------------------------------------------
@BAD_INPUT
@given(payload=near_valid_single() | payloads)
# orjson reads an integer over int64 as such; the fast path put it into an int64 array
@example(payload=b'{"ts": 18446744073709551615, "v": 1.5}')
@example(payload=b'{"ts": 9223372036854775808, "v": -2.5}')
@example(payload=b'{"ts": -9223372036854775809, "v": 0.5}')
@example(payload=b'{"ts": "0001-01-01T00:00:00+23:59", "v": 1.5}')
@example(payload=b'{"ts": "9999-12-31T23:59:59.999999-23:59", "v": 1.5}')
@example(payload=b'{"ts": %d, "v": 1e400}' % NOW)
@example(payload=b'{"ts": %d, "v": 123456789012345678901234567890}' % NOW)
def test_single_reading_is_accepted_exactly_by_the_rules(payload):
    expected = reference_single(payload)
    fast = _outcome(lambda: decode_message("fab/m/ch1/temp", payload, root=ROOT, now_ms=NOW, limits=LIMITS))
    slow = _outcome(lambda: decode_readings("fab/m/ch1/temp", payload, root=ROOT, now_ms=NOW, limits=LIMITS))
    if expected is None:
        assert fast[0] == "bad" and slow[0] == "bad", (fast, slow)
        return
    assert fast == ("ok", ("m", "ch1/temp", *expected))
    assert slow[0] == "ok" and (slow[1].ts.tolist(), slow[1].value.tolist()) == ([expected[0]], [expected[1]])


@BAD_INPUT
@given(payload=near_valid_batch() | payloads)
@example(payload=b'{"ts": [18446744073709551615], "sensor": ["a"], "v": [1.5]}')
@example(payload=b'{"ts": [%d, "x"], "sensor": ["a", ["b"]], "v": [1, 2]}' % NOW)
@example(payload=b'{"ts": [%d], "sensor": [{"a": 1}], "v": [1]}' % NOW)
def test_batch_is_decoded_whole_or_refused_with_a_reason(payload):
    kind, result = _outcome(lambda: decode_message("fab/m", payload, root=ROOT, now_ms=NOW, limits=LIMITS))
    if kind == "bad":
        return
    assert isinstance(result, ReadingBatch)
    doc = orjson.loads(payload)
    n = len(doc["ts"])
    assert n > 0 and len(result) == n and len(result.sensor_codes) == n and len(result.value) == n
    assert [result.sensor_names[c] for c in result.sensor_codes.tolist()] == doc["sensor"]
    assert result.value.tolist() == [float(v) for v in doc["v"]]
    assert all(math.isfinite(v) for v in result.value.tolist())
    assert all(NOW - LIMITS.max_late_ms <= t <= NOW + LIMITS.max_future_ms for t in result.ts.tolist())


@BAD_INPUT
@given(batch=good_batch())
def test_a_good_batch_comes_back_exactly(batch):
    payload, rows = batch
    result = decode_message("fab/cvd-02", payload, root=ROOT, now_ms=NOW, limits=LIMITS)
    assert isinstance(result, ReadingBatch) and result.machine == "cvd-02"
    decoded = [(result.sensor_names[c], t, v) for c, t, v in
               zip(result.sensor_codes.tolist(), result.ts.tolist(), result.value.tolist(), strict=True)]
    assert decoded == rows


@st.composite
def near_valid_context(draw) -> bytes:
    doc: dict = {"ts": draw(good_ts | any_ts), "event": draw(st.sampled_from(["start", "end"]) | json_values),
                 "lot": draw(names | json_values), "wafer": draw(names | json_values),
                 "recipe": draw(names | json_values)}
    for key in draw(st.sets(st.sampled_from(sorted(doc)), max_size=1)):
        del doc[key]
    if draw(st.integers(0, 4)) == 0:
        doc["x"] = draw(json_values)
    return json.dumps(doc, allow_nan=True).encode()


@BAD_INPUT
@given(topic=topics, payload=near_valid_context() | payloads)
@example(topic="fab-ctx/m", payload=b'{"ts": 1, "event": ["start"], "lot": "L", "wafer": "W", "recipe": "R"}')
@example(topic="fab-ctx/m", payload=b'{"ts": 1, "event": {"a": 1}, "lot": "L", "wafer": "W", "recipe": "R"}')
def test_context_event_is_decoded_or_refused_with_a_reason(topic, payload):
    if not topic.startswith(CTX + "/"):
        return
    kind, result = _outcome(lambda: decode_context(topic, payload, root=CTX, now_ms=NOW, limits=LIMITS))
    if kind == "ok":
        assert isinstance(result, ContextEvent) and result.event in ("start", "end")
        assert result.machine == topic[len(CTX) + 1:] and "/" not in result.machine
        assert all(isinstance(x, str) and x for x in (result.machine, result.lot, result.wafer, result.recipe))


@BAD_INPUT
@given(topic=topics, payload=payloads)
@example(topic="fab-ctx", payload=b'{"ts": [%d], "sensor": ["a"], "v": [1]}' % NOW)  # was: machine "ctx"
@example(topic="fabx/m/s", payload=b'{"ts": %d, "v": 1.5}' % NOW)  # was: machine "x"
def test_any_topic_is_decoded_by_its_shape_or_refused(topic, payload):
    """A reading's machine and sensor are exactly the topic's levels under the root."""
    kind, result = _outcome(lambda: decode_message(topic, payload, root=ROOT, now_ms=NOW, limits=LIMITS))
    if kind == "bad":
        return
    assert topic.startswith(ROOT + "/"), topic
    machine, _, sensor = topic[len(ROOT) + 1:].partition("/")
    assert machine and "" not in sensor.split("/")[1:]
    if isinstance(result, SingleReading):
        assert result[:2] == (machine, sensor)
    else:
        assert result.machine == machine and not sensor


# ---- assembly: bad messages next to good ones ---------------------------------------------
def _good_single(i: int) -> tuple[str, bytes, tuple]:
    ts, value = NOW - 1000 + i, i * 0.25 - 3
    return f"fab/good-{i % 3}/ch1/temp", b'{"ts": %d, "v": %r}' % (ts, value), (f"good-{i % 3}", "ch1/temp", ts, value)


bad_messages = st.tuples(topics, payloads | near_valid_single() | near_valid_batch() | near_valid_context())


@BAD_INPUT
@given(plan=st.lists(st.tuples(st.booleans(), bad_messages, st.integers(0, 1)), min_size=1, max_size=25))
@example(plan=[(True, ("fab/m/s", b'{"ts": 18446744073709551615, "v": 1.5}'), 1), (False, ("", b""), 1)])
@example(plan=[(True, ("fab-ctx", b'{"ts": [%d], "sensor": ["a"], "v": [1]}' % NOW), 1), (False, ("", b""), 0)])
def test_bad_messages_never_block_the_good_ones(plan):
    """Each message lands in exactly one place; every good one is decoded as sent; every
    quarantined one has a reason and is kept so that the log can take it."""
    messages, good = [], []
    for mid, (is_bad, (topic, payload), qos) in enumerate(plan, start=1):
        if is_bad:
            messages.append((topic, payload, qos, mid))
        else:
            topic, payload, reading = _good_single(mid)
            messages.append((topic, payload, qos, mid))
            good.append(reading)
    out = assemble(messages, readings_root=ROOT, context_prefix=CTX + "/", now_ms=NOW, limits=LIMITS)

    assert out.tokens == [mid for _, _, qos, mid in messages if qos]
    placed = len(out.singles) + sum(1 for _ in out.batches) + len(out.context) + len(out.quarantine)
    assert placed == len(messages)
    singles = [tuple(s) for s in out.singles]
    position = 0  # the good readings, in order, among whatever bad input was accepted as good
    for reading in good:
        position = singles.index(reading, position) + 1
    assert all(q.reason and not q.reason.startswith("internal error") for q in out.quarantine)
    log = SEGMENT_MAGIC + b"".join(encode_quarantine(q) for q in out.quarantine)
    assert decode_records(log)[0] == out.quarantine


@BAD_INPUT
@given(size=st.integers(0, 3 * QUARANTINE_PAYLOAD_LIMIT), fill=st.binary(min_size=1, max_size=8))
def test_quarantine_keeps_a_bounded_prefix(size, fill):
    payload = (fill * (size // len(fill) + 1))[:size]
    out = assemble([("fab/m/s", payload, 1, 1)], readings_root=ROOT, context_prefix=CTX + "/", now_ms=NOW,
                   limits=LIMITS)
    if size > LIMITS.max_payload:
        assert [q.reason for q in out.quarantine] == [
            f"payload of {size} bytes is over the limit of {LIMITS.max_payload}"]
    kept = payload_text(payload)
    assert len(kept) <= QUARANTINE_PAYLOAD_LIMIT + 64


def test_a_codec_bug_costs_only_its_own_message(monkeypatch):
    """Should the codec raise anything but PayloadError, that message is quarantined as an
    internal error and the good ones around it still decode."""
    import ingest.assemble as assembly

    decode = assembly.decode_message

    def buggy(topic, payload, **kw):
        if payload == b"boom":
            raise OverflowError("Python int too large to convert to C long")
        return decode(topic, payload, **kw)
    monkeypatch.setattr(assembly, "decode_message", buggy)
    (t1, p1, r1), (t2, p2, r2) = _good_single(1), _good_single(2)
    out = assemble([(t1, p1, 1, 1), ("fab/m/s", b"boom", 1, 2), (t2, p2, 1, 3)], readings_root=ROOT,
                   context_prefix=CTX + "/", now_ms=NOW, limits=LIMITS)
    assert [tuple(s) for s in out.singles] == [r1, r2] and out.tokens == [1, 2, 3]
    assert [(q.topic, q.reason, q.payload) for q in out.quarantine] == [
        ("fab/m/s", "internal error: OverflowError: Python int too large to convert to C long", "boom")]


# ---- the plain path of batches (codec._decode_plain_batch) against the general one --------
@st.composite
def batches_of_known_names(draw) -> tuple[list[str], bytes]:
    """A machine's set of names and a batch payload over them, mostly valid, sometimes not."""
    known = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    n = draw(st.integers(len(known), len(known) + 4))
    sensors = known + draw(st.lists(st.sampled_from(known), min_size=n - len(known), max_size=n - len(known)))
    sensors = draw(st.permutations(sensors))
    if len(known) > 1 and draw(st.booleans()):  # not every name of the set: a set of its own
        sensors = [s if s != known[0] else known[1] for s in sensors]
    if draw(st.integers(0, 5)) == 0:
        sensors = draw(st.lists(names | json_values, min_size=n, max_size=n))
    doc: dict = {"ts": draw(st.lists(good_ts, min_size=n, max_size=n)), "sensor": sensors,
                 "v": draw(st.lists(good_v, min_size=n, max_size=n))}
    for key, odd in (("ts", any_ts), ("v", any_v)):
        if draw(st.integers(0, 3)) == 0:  # one value that may be wrong
            doc[key][draw(st.integers(0, n - 1))] = draw(odd)
    if draw(st.integers(0, 5)) == 0:
        doc[draw(st.sampled_from(["ts", "v", "sensor"]))] = draw(json_values)
    if draw(st.integers(0, 8)) == 0:
        doc["extra"] = 1
    text = json.dumps(doc, allow_nan=True, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 8)) == 0:  # a key twice: JSON's last one counts, for both paths
        text = text.replace("{", '{"v": [1], ', 1)
    return known, text.encode()


@pytest.fixture(params=["compiled", "python"])
def name_reading(request, monkeypatch):
    from ingest import arrayscan
    if request.param == "compiled":
        arrayscan.warm()
    else:
        monkeypatch.setattr(arrayscan, "_compiled", None)
    return request.param


@settings(BAD_INPUT, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # mode only
@given(case=batches_of_known_names())
@example(case=(["a"], b'{"ts": [18446744073709551615], "sensor": ["a"], "v": [1.5]}'))
@example(case=(["a"], b'{"ts": [%d], "sensor": ["a"], "v": [1e400]}' % NOW))
@example(case=(["a"], b'{"ts": [%d], "sensor": ["a"], "v": [true]}' % NOW))
@example(case=(["a", "b"], b'{"ts": [%d, 1], "sensor": ["a"], "v": [1, 2]}' % NOW))
@example(case=(["a", "b"], b'{"ts": [%d, %d], "sensor": ["b", "b"], "v": [1, 2]}' % (NOW, NOW)))  # not the whole set

def test_the_plain_path_takes_only_what_the_general_path_takes_alike(name_reading, case):
    known, payload = case
    machine = "plain-" + "-".join(known)
    codec._MACHINE_NAMES.pop(machine, None)
    first = json.dumps({"ts": [NOW] * len(known), "sensor": known, "v": [0.0] * len(known)}, ensure_ascii=False).encode()
    codec._new_layout(machine, known)  # as the general path makes them known on a layout it has not seen
    if all(json.dumps(name, ensure_ascii=False) == f'"{name}"' for name in known):  # written without an escape
        assert codec._decode_plain_batch(machine, first) is not None
    plain = codec._decode_plain_batch(machine, payload)
    if plain is None:
        return
    general = codec._decode_batch(machine, orjson.loads(payload))
    assert plain.sensor_names == general.sensor_names == sorted(set(orjson.loads(payload)["sensor"]))  # its distinct sensors
    assert plain.sensor_codes.tolist() == general.sensor_codes.tolist()
    assert plain.ts.tolist() == general.ts.tolist() and plain.ts.dtype == general.ts.dtype
    assert plain.value.tolist() == general.value.tolist() and plain.value.dtype == general.value.dtype
    assert plain.layout is not None and plain.layout.name_set is general.layout.name_set


@settings(BAD_INPUT, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # mode only
@given(case=batches_of_known_names())
@example(case=(["a"], b'{"ts": [%d], "sensor": ["a", 1], "v": [1, 2]}' % NOW))
@example(case=(["a"], b'{"ts": [%d], "sensor": ["a\\u0000"], "v": [1]}' % NOW))
def test_a_machines_first_batch_is_taken_by_the_plain_path_as_by_the_general_one(name_reading, case):
    """A machine's names unknown yet: the plain path reads them itself, and what it takes, the
    general path takes alike, knowing the same set of names afterwards."""
    _, payload = case
    machine = "first-plain"
    codec._MACHINE_NAMES.pop(machine, None)
    codec._RAW_LAYOUTS.clear()  # layouts by the bytes of names: an earlier example's would answer
    plain = codec._decode_plain_batch(machine, payload)
    if plain is None:
        return
    known_after_plain = codec._MACHINE_NAMES.pop(machine)
    codec._LAYOUTS.clear()
    general = codec._decode_batch(machine, orjson.loads(payload))
    assert plain.sensor_names == general.sensor_names
    assert plain.sensor_codes.tolist() == general.sensor_codes.tolist()
    assert plain.ts.tolist() == general.ts.tolist() and plain.value.tolist() == general.value.tolist()
    assert known_after_plain is codec._MACHINE_NAMES[machine] is plain.layout.name_set


def test_a_machines_first_plain_batch_takes_the_plain_path(name_reading, monkeypatch):
    monkeypatch.setattr(codec, "_decode_batch", lambda *a: pytest.fail("took the general path"))
    codec._MACHINE_NAMES.pop("plain-new", None)
    payload = json.dumps({"ts": [NOW] * 3, "sensor": ["b", "a", "b"], "v": [1, 2.5, 3]}).encode()
    batch = decode_message("fab/plain-new", payload, root=ROOT, now_ms=NOW, limits=LIMITS)
    assert [batch.sensor_names[c] for c in batch.sensor_codes.tolist()] == ["b", "a", "b"]
    assert batch.value.tolist() == [1.0, 2.5, 3.0]


def test_a_plain_batch_of_known_names_takes_the_plain_path(name_reading, monkeypatch):
    sensors = ["ch1/temp", "ch2/temp", "ch1/temp", "gas/ü"]
    payload = json.dumps({"ts": [NOW] * 4, "sensor": sensors, "v": [1, 2.5, 3, 4]}, ensure_ascii=False).encode()
    decode_message("fab/plain-m", payload, root=ROOT, now_ms=NOW, limits=LIMITS)  # the names become known
    monkeypatch.setattr(codec, "_decode_batch", lambda *a: pytest.fail("took the general path"))
    for order in (sensors, sensors[::-1]):
        again = payload.replace(json.dumps(sensors, ensure_ascii=False).encode(),
                                json.dumps(order, ensure_ascii=False).encode())
        batch = decode_message("fab/plain-m", again, root=ROOT, now_ms=NOW, limits=LIMITS)
        assert [batch.sensor_names[c] for c in batch.sensor_codes.tolist()] == order
        assert batch.value.tolist() == [1.0, 2.5, 3.0, 4.0]
