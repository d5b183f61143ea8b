"""The rule engine: one raised, one cleared, nothing in between; `for`, hysteresis, flapping,
recipe limits, restarts. The vectorised engine is checked against a plain per-reading
state machine written from the rules' description."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from alerts.engine import AlertEngine
from alerts.lotcontext import LotContext
from alerts.recipes import parse_book
from core.settings import AlertRule
from ingest.codec import ContextEvent
from tiers.keys import SensorKeys

T0 = 1_764_000_000_000
NOW = T0 + 10**9


def engine(*rules, flap_window_ms=60_000, flap_max=3, **kw):
    return AlertEngine(list(rules), keys=SensorKeys(), flap_window_ms=flap_window_ms, flap_max=flap_max, **kw)


def feed(eng, machine, sensor, values, t0=T0, step=100):
    """Readings of one sensor, `step` ms apart; returns [(state, kind, index of reading)]."""
    key = eng.keys.id_of(machine, sensor)
    ts = t0 + step * np.arange(len(values), dtype=np.int64)
    events = eng.evaluate(machine, np.full(len(values), key, np.int32), ts,
                          np.asarray(values, dtype=float), NOW)
    return [(e.state, e.kind, int((e.ts - t0) // step)) for e in events]


OVERTEMP = AlertRule(name="chamber-overtemp", sensor="*/ch*/temp", high=80.0, low=10.0, hysteresis=2.0)


def test_one_raised_then_one_cleared_past_the_hysteresis():
    eng = engine(OVERTEMP)
    events = feed(eng, "etch-01", "ch1/temp", [50, 81, 90, 85, 79, 78.5, 78, 50, 50])
    # 79 and 78.5 are back inside but not past the hysteresis (80 - 2): no clear yet.
    assert events == [("raised", "high", 1), ("cleared", "high", 6)]


def test_an_excursion_across_batches_is_raised_once():
    eng = engine(OVERTEMP)
    assert feed(eng, "etch-01", "ch1/temp", [50, 85]) == [("raised", "high", 1)]
    assert feed(eng, "etch-01", "ch1/temp", [86, 87], t0=T0 + 1000) == []
    assert feed(eng, "etch-01", "ch1/temp", [60], t0=T0 + 2000) == [("cleared", "high", 0)]
    # Another sensor the glob matches has its own state; one it does not match never alerts.
    assert feed(eng, "etch-01", "ch2/temp", [5, 5]) == [("raised", "low", 0)]
    assert feed(eng, "etch-01", "rf/temp", [500]) == []


def test_event_payload_fields():
    eng = engine(OVERTEMP)
    key = eng.keys.id_of("etch-01", "ch1/temp")
    [e] = eng.evaluate("etch-01", np.array([key], np.int32), np.array([T0 + 5]), np.array([81.5]), NOW)
    assert (e.machine, e.sensor, e.ts, e.value, e.kind, e.threshold, e.rule, e.state, e.raised_at) == (
        "etch-01", "ch1/temp", T0 + 5, 81.5, "high", 80.0, "chamber-overtemp", "raised", NOW)
    assert e.id == "w0:1" and not e.flapping


def test_for_duration_must_pass_without_a_break():
    rule = AlertRule(name="slow", sensor="*", high=10.0, for_seconds=0.5)
    eng = engine(rule)
    # 100 ms apart: out for 0.3 s then back inside cancels; the second run lasts 0.5 s at index 11.
    values = [11, 11, 11, 11, 5, 12, 12, 12, 12, 12, 12, 12, 12, 5]
    assert feed(eng, "m", "s", values) == [("raised", "high", 10), ("cleared", "high", 13)]


def test_pending_carries_over_batches():
    eng = engine(AlertRule(name="slow", sensor="*", high=10.0, for_seconds=1.0))
    assert feed(eng, "m", "s", [11, 11, 11]) == []
    assert feed(eng, "m", "s", [11, 11], t0=T0 + 900) == [("raised", "high", 1)]


def test_from_high_straight_to_low():
    eng = engine(OVERTEMP)
    assert feed(eng, "m", "ch1/temp", [90, 0, 50]) == [
        ("raised", "high", 0), ("cleared", "high", 1), ("raised", "low", 1), ("cleared", "low", 2)]


def test_flapping_is_damped_and_says_so():
    eng = engine(AlertRule(name="r", sensor="*", high=10.0), flap_window_ms=10_000, flap_max=2)
    key = eng.keys.id_of("m", "s")
    values = [11, 5, 11, 5, 11, 5, 11, 5, 11, 5] + [5] * 100 + [5]
    ts = T0 + 100 * np.arange(len(values), dtype=np.int64)
    events = eng.evaluate("m", np.full(len(values), key, np.int32), ts, np.array(values, float), NOW)
    states = [(e.state, e.flapping) for e in events]
    # Two ordinary pairs, then the third raise within the window is held raised (flapping)
    # until the sensor stayed inside for a whole window (10 s after its last excursion).
    assert states == [("raised", False), ("cleared", False), ("raised", False), ("cleared", False),
                      ("raised", True), ("cleared", False)]
    assert "flapping" in events[4].note and "stable again" in events[5].note
    assert events[5].ts == ts[8] + 10_000


def test_late_reading_does_not_move_an_open_excursion():
    eng = engine(OVERTEMP)
    assert feed(eng, "m", "ch1/temp", [85], t0=T0 + 1000) == [("raised", "high", 0)]
    assert feed(eng, "m", "ch1/temp", [20], t0=T0) == []  # older than what was judged
    assert eng.late_readings == 1
    assert feed(eng, "m", "ch1/temp", [20], t0=T0 + 2000) == [("cleared", "high", 0)]


def test_restore_keeps_open_excursions_and_the_sequence():
    eng = engine(OVERTEMP)
    key = eng.keys.id_of("m", "ch1/temp")
    first = eng.evaluate("m", np.array([key, key], np.int32), np.array([T0, T0 + 1]), np.array([85.0, 86.0]), NOW)
    assert [e.state for e in first] == ["raised"]
    again = engine(OVERTEMP)  # a restart: new process, new key ids
    again.keys.id_of("other", "x")
    assert again.restore(first) == 1
    assert feed(again, "m", "ch1/temp", [87, 88], t0=T0 + 2) == []
    assert feed(again, "m", "ch1/temp", [20], t0=T0 + 1000) == [("cleared", "high", 0)]
    assert again.next_seq == first[-1].seq + 2


def test_the_fast_path_ignores_batches_without_excursions():
    eng = engine(OVERTEMP)
    keys = np.array([eng.keys.id_of("m", f"ch{i}/temp") for i in range(50)], np.int32)
    ts = T0 + np.arange(50, dtype=np.int64)
    assert eng.evaluate("m", keys, ts, np.full(50, 40.0), NOW) == []
    assert eng.open_excursions() == []


# ---- recipes ---------------------------------------------------------------------------------
BOOK = parse_book({"recipes": [
    {"name": "ETCH-A", "version": "1", "effective": T0 - 86_400_000, "steps": [
        {"name": "stabilize", "duration": "10s", "settle": "2s", "limits": {"temp": [60.0, 3.0]}},
        {"name": "etch", "duration": "20s", "limits": {"temp": [65.0, 2.0], "pressure": [30.0, 3.0]}},
    ]},
    {"name": "ETCH-A", "version": "2", "effective": T0 + 100_000, "steps": [
        {"name": "stabilize", "duration": "30s", "limits": {"temp": [70.0, 3.0]}},
    ]},
]})


def recipe_engine(hysteresis=0.0):
    lots = LotContext()
    rule = AlertRule(name="window", sensor="*", recipe=True, hysteresis=hysteresis)
    return AlertEngine([rule], keys=SensorKeys(), lots=lots, book=BOOK), lots


def start(lots, ts, lot="L1", version=None):
    lots.add(ContextEvent(ts=ts, machine="etch-01", event="start", lot=lot, wafer="W01", recipe="ETCH-A",
                          recipe_version=version or BOOK.version_at("ETCH-A", ts).version))


def test_recipe_limits_follow_the_step_and_settle():
    eng, lots = recipe_engine()
    start(lots, T0)
    # 1 s into stabilize (settling: no limit), 3 s in (60 +- 3), 12 s in (etch: 65 +- 2).
    key = eng.keys.id_of("etch-01", "ch1/temp")
    ts = np.array([T0 + 1000, T0 + 3000, T0 + 12_000, T0 + 13_000], np.int64)
    events = eng.evaluate("etch-01", np.full(4, key, np.int32), ts, np.array([99.0, 64.0, 64.0, 64.0]), NOW)
    assert [(e.state, e.kind, e.threshold, e.step, e.recipe_version, e.lot) for e in events] == [
        ("raised", "high", 63.0, "stabilize", "1", "L1"), ("cleared", "high", 67.0, "etch", "1", "L1")]
    # A kind the step does not set is not judged; nor is anything after the last step.
    p = eng.keys.id_of("etch-01", "ch1/pressure")
    assert eng.evaluate("etch-01", np.array([p], np.int32), np.array([T0 + 3000]), np.array([999.0]), NOW) == []
    assert eng.evaluate("etch-01", np.array([key], np.int32), np.array([T0 + 31_000]), np.array([999.0]), NOW) == []


def test_a_run_keeps_the_version_it_started_with_and_the_next_run_gets_the_new_one():
    eng, lots = recipe_engine()
    key = eng.keys.id_of("etch-01", "ch1/temp")
    start(lots, T0 + 90_000, "L1")  # before version 2 took effect
    start(lots, T0 + 130_000, "L2")  # after
    ts = np.array([T0 + 95_000, T0 + 135_000], np.int64)
    events = eng.evaluate("etch-01", np.full(2, key, np.int32), ts, np.array([68.0, 68.0]), NOW)
    # 68 is above version 1's stabilize window (57..63) and inside version 2's (67..73).
    assert [(e.state, e.lot, e.recipe_version, e.threshold) for e in events] == [
        ("raised", "L1", "1", 63.0), ("cleared", "L2", "2", 73.0)]


def test_an_open_recipe_excursion_clears_when_the_lot_run_ends():
    eng, lots = recipe_engine()
    start(lots, T0)
    key = eng.keys.id_of("etch-01", "ch1/temp")
    eng.evaluate("etch-01", np.array([key], np.int32), np.array([T0 + 5000]), np.array([70.0]), NOW)
    lots.add(ContextEvent(ts=T0 + 6000, machine="etch-01", event="end", lot="L1", wafer="W01", recipe="ETCH-A"))
    [e] = eng.evaluate("etch-01", np.array([key], np.int32), np.array([T0 + 7000]), np.array([70.0]), NOW)
    assert (e.state, e.note, e.threshold, e.lot) == ("cleared", "the lot run ended", 63.0, None)


def test_recipe_hysteresis_is_a_fraction_of_the_tolerance():
    eng, lots = recipe_engine(hysteresis=0.5)
    start(lots, T0)
    key = eng.keys.id_of("etch-01", "ch1/temp")
    ts = T0 + 3000 + np.arange(3, dtype=np.int64)
    events = eng.evaluate("etch-01", np.full(3, key, np.int32), ts, np.array([64.0, 62.0, 61.5]), NOW)
    assert [(e.state, e.value) for e in events] == [("raised", 64.0), ("cleared", 61.5)]  # 63 - 0.5 * 3


# ---- the vectorised engine equals the plain state machine -----------------------------------
def reference(values, ts_batches, *, high, low, for_ms, hyst, window, flap_max):
    """Per reading, exactly as the module docstring describes the rules."""
    phase, kind, since, last_bad, raises, out = "normal", 0, 0, 0, [], []

    def cls(v):
        return 1 if v > high else -1 if v < low else 0

    def good(v):
        return low + hyst <= v <= high - hyst

    for batch in ts_batches:
        for i in batch:
            t, v = i * 100, values[i]
            while True:
                if phase == "normal":
                    c = cls(v)
                    if c == 0:
                        break
                    kind, since = c, t
                    phase = "pending"
                    continue
                if phase == "pending":
                    if cls(v) != kind:
                        phase = "normal"
                        continue
                    if t - since >= for_ms:
                        raises = [r for r in raises if r >= t - window]
                        flapping = 0 < flap_max <= len(raises)
                        raises.append(t)
                        out.append(("raised", kind, i, flapping))
                        phase, last_bad = ("damped" if flapping else "raised"), t
                    break
                if phase == "raised":
                    if (kind > 0 and v <= high - hyst) or (kind < 0 and v >= low + hyst):
                        out.append(("cleared", kind, i, False))
                        phase = "normal"
                        continue
                    break
                if good(v) and t - last_bad >= window:
                    out.append(("cleared", kind, i, False))
                    phase = "normal"
                elif not good(v):
                    last_bad = t
                break
    return out


# Runs of equal values, so that excursions, pauses and quiet spells of every length occur.
_RUNS = st.lists(st.tuples(st.sampled_from([0.0, 4.0, 5.0, 6.0, 9.0, 10.0, 11.0, 15.0, 16.0, 20.0]),
                           st.integers(1, 12)), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@example(runs=[(20.0, 1), (10.0, 1), (20.0, 1), (10.0, 5)], cuts=[], for_ms=0, hyst=0.0, flap_max=1, window=300)
@example(runs=[(16.0, 3), (10.0, 1), (16.0, 3), (14.5, 2), (10.0, 12), (0.0, 4), (10.0, 12)], cuts=[4, 9, 20],
         for_ms=100, hyst=1.0, flap_max=1, window=1000)
@given(runs=_RUNS, cuts=st.lists(st.integers(0, 240), max_size=6),
       for_ms=st.sampled_from([0, 100, 250]), hyst=st.sampled_from([0.0, 1.0]),
       flap_max=st.sampled_from([0, 1, 2]), window=st.sampled_from([300, 1000]))
def test_vectorised_engine_matches_the_reference(runs, cuts, for_ms, hyst, flap_max, window):
    values = [v for v, n in runs for _ in range(n)]
    high, low = 15.0, 5.0
    rule = AlertRule(name="r", sensor="*", high=high, low=low, for_seconds=for_ms / 1000, hysteresis=hyst)
    eng = engine(rule, flap_window_ms=window, flap_max=flap_max)
    key = eng.keys.id_of("m", "s")
    bounds = sorted({0, len(values), *[c for c in cuts if c < len(values)]})
    batches = [list(range(a, b)) for a, b in pairwise(bounds)]
    got = []
    for batch in batches:
        idx = np.array(batch)
        rng = np.random.default_rng(len(batch))
        idx = idx[rng.permutation(len(idx))]  # within a batch, arrival order must not matter
        for e in eng.evaluate("m", np.full(len(idx), key, np.int32), T0 + idx * 100,
                              np.array([values[i] for i in idx]), NOW):
            got.append((e.state, 1 if e.kind == "high" else -1, int((e.ts - T0) // 100), e.flapping))
    assert got == reference(values, batches, high=high, low=low, for_ms=for_ms, hyst=hyst,
                            window=window, flap_max=flap_max)


def test_single_readings_of_several_machines_are_judged_by_their_own_runs():
    lots = LotContext()
    eng = AlertEngine([AlertRule(name="window", sensor="*", recipe=True), OVERTEMP], keys=SensorKeys(),
                      lots=lots, book=BOOK)
    start(lots, T0)  # only etch-01 runs a lot
    a, b = eng.keys.id_of("etch-01", "ch1/temp"), eng.keys.id_of("etch-02", "ch1/temp")
    events = eng.evaluate(None, np.array([b, a, b], np.int32), np.array([T0 + 3000, T0 + 3000, T0 + 3001]),
                          np.array([70.0, 70.0, 90.0]), NOW)
    # etch-01: out of its recipe window (57..63); etch-02 has no run, only the fixed rule judges it.
    assert sorted((e.machine, e.rule, e.state, e.value) for e in events) == [
        ("etch-01", "window", "raised", 70.0), ("etch-02", "chamber-overtemp", "raised", 90.0)]
    assert [e.lot for e in events if e.machine == "etch-01"] == ["L1"]
