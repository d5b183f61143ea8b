import json

import numpy as np
import pytest

from ingest.codec import Limits, PayloadError, decode_context, decode_readings

NOW = 1_764_000_000_000
LIMITS = Limits(max_future_ms=15 * 60_000, max_late_ms=7 * 86_400_000, max_payload=4096)


def readings(topic: str, payload: str | bytes):
    raw = payload.encode() if isinstance(payload, str) else payload
    return decode_readings(topic, raw, root="fab", now_ms=NOW, limits=LIMITS)


def test_single_reading_with_sensor_path():
    batch = readings("fab/etch-01/ch1/temp", f'{{"ts": {NOW}, "v": 23.51}}')
    assert batch.machine == "etch-01" and batch.sensor_names == ["ch1/temp"]
    assert batch.ts.tolist() == [NOW] and batch.value.tolist() == [23.51]


def test_batches_of_the_same_sensors_in_another_order_share_their_names_and_key_cache():
    # Gateways that send readings in arrival order make a new interleaving in nearly every
    # message; what depends only on the set of names (checks, key ids) is done once.
    first = readings("fab/etch-07", json.dumps({"ts": [NOW] * 3, "sensor": ["z/p", "a/t", "m/v"], "v": [1, 2, 3]}))
    second = readings("fab/etch-07", json.dumps({"ts": [NOW] * 3, "sensor": ["m/v", "z/p", "a/t"], "v": [3, 1, 2]}))
    assert first.layout is not second.layout
    assert first.sensor_names is second.sensor_names and first.sensor_names == ["a/t", "m/v", "z/p"]
    assert first.layout.key_cache is second.layout.key_cache
    for batch in (first, second):
        decoded = {first.sensor_names[c]: v for c, v in zip(batch.sensor_codes, batch.value.tolist(), strict=True)}
        assert decoded == {"z/p": 1.0, "a/t": 2.0, "m/v": 3.0}


def test_a_machine_whose_set_of_sensors_changes_gets_exactly_its_messages_names():
    # The decoder first tries the machine's last set of names (ingest.codec._layout_of_known_names):
    # a message with fewer, more or other names must not be read over that set.
    def batch(sensors: list) -> object:
        return readings("fab/cvd-03", json.dumps({"ts": [NOW] * len(sensors), "sensor": sensors,
                                                  "v": list(range(len(sensors)))}))

    assert batch(["b", "a", "c", "a"]).sensor_names == ["a", "b", "c"]
    assert batch(["c", "a", "b"]).sensor_names == ["a", "b", "c"]  # the same set, another order
    for sensors in (["c", "a", "c"], ["d", "a", "b", "c"], ["a", "b", "x"]):
        found = batch(sensors)
        assert found.sensor_names == sorted(set(sensors))
        assert [found.sensor_names[c] for c in found.sensor_codes] == sensors
    with pytest.raises(PayloadError, match="sensor must hold strings"):
        batch(["a", "b", 7])
    with pytest.raises(PayloadError, match="empty level"):
        batch(["a", "b", "c//d"])


def test_a_bad_name_is_refused_every_time_not_only_the_first():
    for _ in range(2):
        with pytest.raises(PayloadError, match="empty level"):
            readings("fab/m", json.dumps({"ts": [NOW, NOW], "sensor": ["ok", "bad//name"], "v": [1, 2]}))


def test_iso_timestamp_with_offset_is_utc_milliseconds():
    batch = readings("fab/m/s", '{"ts": "2025-11-24T17:00:00.123+01:00", "v": 1}')
    assert batch.ts.tolist() == [1764000000123]


def test_batch_decodes_to_columns_with_sensor_dictionary():
    doc = {"ts": [NOW, NOW + 1, NOW + 2], "sensor": ["a", "b/c", "a"], "v": [1, 2.5, -3.25]}
    batch = readings("fab/cvd-02", json.dumps(doc))
    assert batch.sensor_names == ["a", "b/c"]
    assert batch.sensor_codes.tolist() == [0, 1, 0]
    assert batch.ts.dtype == np.int64 and batch.value.dtype == np.float64
    assert batch.value.tolist() == [1.0, 2.5, -3.25]


@pytest.mark.parametrize("topic, payload, reason", [
    ("fab/m/s", f'{{"ts": {NOW}, "v": NaN}}', "not valid JSON"),
    ("fab/m/s", f'{{"ts": {NOW}, "v": Infinity}}', "not valid JSON"),
    ("fab/m/s", f'{{"ts": {NOW}, "v": "1.0"}}', "v must be a number"),
    ("fab/m/s", f'{{"ts": {NOW}, "v": false}}', "v must be a number"),
    ("fab/m/s", f'{{"ts": {NOW}.5, "v": 1}}', "ts must be epoch milliseconds"),
    ("fab/m/s", '{"v": 1}', "missing field ts"),
    ("fab/m/s", f'{{"ts": {NOW}, "v": 1, "unit": "C"}}', "unknown field unit"),
    ("fab/m/s", '{"ts": "yesterday", "v": 1}', "not ISO-8601"),
    ("fab/m/s", '{"ts": "2025-11-24T17:00:00", "v": 1}', "no UTC offset"),
    ("fab/m/s", f'{{"ts": {NOW + 16 * 60_000}, "v": 1}}', "max_future"),
    ("fab/m/s", f'{{"ts": {NOW - 8 * 86_400_000}, "v": 1}}', "max_late"),
    ("fab/m/s", '{"ts": [1], "sensor": ["a"], "v": [1]}', "batch on a single-reading topic"),
    ("fab/m", f'{{"ts": {NOW}, "v": 1}}', "single reading on a machine topic"),
    ("fab/m", f'{{"ts": [{NOW}], "sensor": ["a", "b"], "v": [1]}}', "unequal lengths"),
    ("fab/m", '{"ts": [], "sensor": [], "v": []}', "empty batch"),
    ("fab/m", f'{{"ts": [{NOW}], "sensor": [""], "v": [1]}}', "empty sensor"),
    ("fab/m", f'{{"ts": [{NOW}], "sensor": [7], "v": [1]}}', "sensor must hold strings"),
    ("fab/m", f'{{"ts": [{NOW}, {NOW}], "sensor": ["a", "a"], "v": [1, true]}}', "found bool"),
    ("fab/m", f'{{"ts": {NOW}, "sensor": "a", "v": 1}}', "as arrays"),
    ("fab//s", f'{{"ts": {NOW}, "v": 1}}', "empty machine"),
    ("fab/m/", f'{{"ts": {NOW}, "v": 1}}', "empty sensor"),
    ("fab/m/a//b", f'{{"ts": {NOW}, "v": 1}}', "empty level"),
    ("fab/m/s", b"\xff\xfe", "not valid JSON"),
    ("fab/m/s", "x" * 5000, "over the limit"),
])
def test_bad_messages_are_rejected_with_a_reason(topic, payload, reason):
    with pytest.raises(PayloadError) as caught:
        readings(topic, payload)
    assert reason in caught.value.reason


def test_context_event():
    payload = json.dumps({"ts": NOW, "event": "start", "lot": "L2611-07", "wafer": "W07", "recipe": "ETCH-A"})
    event = decode_context("fab-ctx/etch-01", payload.encode(), root="fab-ctx", now_ms=NOW, limits=LIMITS)
    assert (event.machine, event.event, event.lot, event.wafer, event.recipe) == (
        "etch-01", "start", "L2611-07", "W07", "ETCH-A")


@pytest.mark.parametrize("payload, reason", [
    ({"ts": NOW, "event": "pause", "lot": "L", "wafer": "W", "recipe": "R"}, "event must be"),
    ({"ts": NOW, "event": "end", "lot": "", "wafer": "W", "recipe": "R"}, "lot must be"),
    ({"ts": NOW, "event": "end", "lot": "L", "wafer": "W"}, "missing field recipe"),
])
def test_bad_context_events(payload, reason):
    with pytest.raises(PayloadError) as caught:
        decode_context("fab-ctx/m", json.dumps(payload).encode(), root="fab-ctx", now_ms=NOW, limits=LIMITS)
    assert reason in caught.value.reason
