import json
import re

import numpy as np

from simulator import ContextEvent, FabModel, SimConfig, generate_messages
from simulator.payloads import context_messages, messages, reading_messages, readings_in

START = 1_764_000_000_000
CFG = SimConfig(machines=3, sensors_per_machine=7, rate_hz=20, seed=2)


def blocks_for(seconds: float):
    model = FabModel(CFG, START)
    blocks, events = model.advance(START + int(seconds * 1000))
    return model, blocks, events


def test_batch_payloads_are_columnar_and_carry_every_reading():
    model, blocks, _ = blocks_for(10)
    msgs = reading_messages(blocks, batch=64, topic_root="fab")
    got = {m: [] for m in model.machines}
    for topic, payload in msgs:
        assert isinstance(payload, bytes)
        root, machine = topic.split("/")
        assert root == "fab" and machine in got
        body = json.loads(payload)
        assert list(body) == ["ts", "sensor", "v"]
        assert 1 <= len(body["ts"]) == len(body["sensor"]) == len(body["v"]) <= 64
        assert all(type(t) is int for t in body["ts"])
        assert all(type(s) is str for s in body["sensor"])
        assert all(type(v) is float for v in body["v"])
        got[machine] += zip(body["ts"], body["sensor"], body["v"], strict=True)
    for b in blocks:
        assert got[b.machine] == list(zip(b.ts.tolist(), b.sensor.tolist(), b.value.tolist(),
                                          strict=True))
        assert sum(1 for t, _ in msgs if t == f"fab/{b.machine}") == -(-len(b) // 64)


def test_single_reading_payloads_use_the_sensor_topic():
    model, blocks, _ = blocks_for(2)
    msgs = reading_messages(blocks, batch=1, topic_root="plant")
    assert len(msgs) == sum(len(b) for b in blocks)
    seen = set()
    for topic, payload in msgs:
        root, machine, sensor = topic.split("/", 2)
        assert root == "plant" and sensor in model.sensors(machine)
        body = json.loads(payload)
        assert list(body) == ["ts", "v"] and type(body["ts"]) is int and type(body["v"]) is float
        seen.add((machine, sensor, body["ts"]))
    assert len(seen) == len(msgs)  # (machine, sensor, ts) identifies a reading
    assert any("/" in topic.split("/", 2)[2] for topic, _ in msgs)  # e.g. plant/etch-01/ch1/temp


def test_values_are_written_as_their_short_decimal():
    model, blocks, _ = blocks_for(5)
    b = blocks[0]
    rounded = type(b)(b.machine, b.names, b.sensor_index[:3], b.ts[:3],
                      np.round(np.array([23.514, 0.1 + 0.2, 0.007]), 2))
    (_, payload), = reading_messages([rounded], batch=10)
    assert payload.endswith(b'"v":[23.51,0.3,0.01]}')
    for _, payload in reading_messages(blocks, batch=500):
        text = payload.decode()
        v_text = text[text.index('"v":[') + 5:-2].split(",")
        assert all(re.fullmatch(r"-?\d+\.\d{1,3}", x) for x in v_text), v_text[:5]
    for b in blocks:
        decimals = [model.sensor_kind(b.machine, n).decimals for n in b.names.tolist()]
        decoded = [json.loads(p)["v"] for _, p in reading_messages([b], batch=1)]
        assert decoded == [round(x, decimals[i])
                           for x, i in zip(b.value.tolist(), b.sensor_index.tolist(), strict=True)]


def test_context_payloads():
    event = ContextEvent(START, "etch-01", "start", "L2548-01", "W01", "ETCH-A")
    (topic, payload), = context_messages([event], ctx_root="fab-ctx")
    assert topic == "fab-ctx/etch-01"
    assert json.loads(payload) == {"ts": START, "event": "start", "lot": "L2548-01", "wafer": "W01",
                                   "recipe": "ETCH-A"}
    assert list(json.loads(payload)) == ["ts", "event", "lot", "wafer", "recipe"]


def decode(msgs):
    out = set()
    for topic, payload in msgs:
        body = json.loads(payload)
        if topic.startswith("fab-ctx/"):
            out.add((topic, *body.values()))
        else:
            out.update((topic, *r) for r in zip(body["ts"], body["sensor"], body["v"], strict=True))
    return out


def test_generate_messages_is_deterministic_and_complete():
    end = START + 20_000
    a = list(generate_messages(CFG, START, end, 50))
    b = list(generate_messages(CFG, START, end, 50, step_ms=333))
    assert decode(a) == decode(b)  # step sizes change message boundaries, not the data
    model = FabModel(CFG, START)
    blocks, events = model.advance(end)
    assert sum(readings_in(t, p) for t, p in a) == sum(len(x) for x in blocks)
    assert [p for t, p in a if t.startswith("fab-ctx/")] == [p for _, p in context_messages(events)]
    assert events
    assert messages(blocks, events, batch=50)[: len(events)] == context_messages(events)
