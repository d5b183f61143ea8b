"""Recipe excursions across step boundaries (issue 15, finding 5): a step change inside a
running lot holds an open excursion through the next step's settle window and then judges it
by the new step's limits; only the end of the run (or a step without a limit for the sensor's
kind) ends it without the value coming back, with a note that says which."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.engine import AlertEngine
from alerts.lotcontext import LotContext
from alerts.recipes import parse_book
from core.settings import AlertRule
from ingest.codec import ContextEvent
from tiers.keys import SensorKeys

T0 = 1_764_000_000_000
NOW = T0 + 10**9
MACHINE, SENSOR = "cvd-03", "ch1/temp"

# Every step settles for 2 s (no limit then), so every boundary has a window without limits.
BOOK = parse_book({"recipes": [
    {"name": "DEP-B", "version": "1", "effective": T0 - 86_400_000, "settle": "2s", "steps": [
        {"name": "ramp", "duration": "10s", "limits": {"temp": [60.0, 3.0]}},       # 57..63 from 2 s
        {"name": "deposit", "duration": "10s", "limits": {"temp": [62.0, 3.0]}},    # 59..65 from 12 s
        {"name": "anneal", "duration": "10s", "limits": {"temp": [58.0, 4.0]}},     # 54..62 from 22 s
        {"name": "purge", "duration": "10s", "limits": {"pressure": [1.0, 0.5]}},   # no temp limit
        {"name": "cool", "duration": "10s", "limits": {"temp": [40.0, 5.0]}},       # 35..45 from 42 s
    ]},
    {"name": "FLIP", "version": "1", "effective": T0 - 86_400_000, "settle": "1s", "steps": [
        {"name": "hot", "duration": "10s", "limits": {"temp": [80.0, 3.0]}},        # 77..83 from 1 s
        {"name": "cold", "duration": "10s", "limits": {"temp": [40.0, 3.0]}},       # 37..43 from 11 s
    ]},
]})


def setup(recipe="DEP-B", hysteresis=0.0, **kw):
    lots = LotContext()
    eng = AlertEngine([AlertRule(name="window", sensor="*", recipe=True, hysteresis=hysteresis)],
                      keys=SensorKeys(), lots=lots, book=BOOK, **kw)
    lots.add(ContextEvent(ts=T0, machine=MACHINE, event="start", lot="L7", wafer="W01", recipe=recipe,
                          recipe_version="1"))
    return eng, lots


def drive(eng, offsets_ms, values, batch):
    """Readings at T0 + offset, in batches of `batch` readings; every event they cause."""
    key = eng.keys.id_of(MACHINE, SENSOR)
    ts = T0 + np.asarray(offsets_ms, dtype=np.int64)
    x = np.asarray(values, dtype=float)
    events = []
    for a in range(0, len(ts), batch):
        b = min(a + batch, len(ts))
        events.extend(eng.evaluate(MACHINE, np.full(b - a, key, np.int32), ts[a:b], x[a:b], NOW))
    return events


def summary(events):
    return [(e.state, e.kind, e.ts - T0, e.threshold, e.step, e.note) for e in events]


@pytest.mark.parametrize("batch", [1, 7, 10_000])
def test_a_continuous_excursion_is_raised_once_through_three_step_boundaries(batch):
    eng, _ = setup(hysteresis=0.5)
    # 50 is below ramp's (57), deposit's (59) and anneal's (54) low limit, every 250 ms from
    # 3 s to 25 s: across the boundaries at 10 s and 20 s and their 2 s settle windows.
    offsets = list(range(3000, 25_000, 250))
    events = drive(eng, offsets, [50.0] * len(offsets), batch)
    assert summary(events) == [("raised", "low", 3000, 57.0, "ramp", "")]
    assert [e.state for e in eng.open_excursions()] == ["raised"]
    # Back inside anneal's window past the hysteresis (54 + 0.5 * 4 = 56): one cleared, whose
    # value is inside the threshold it reports.
    more = drive(eng, [25_000, 25_250, 25_500], [55.0, 58.0, 58.0], batch)
    assert summary(more) == [("cleared", "low", 25_250, 54.0, "anneal", "")]
    assert more[0].value == 58.0 and more[0].value >= more[0].threshold
    assert eng.open_excursions() == []


@pytest.mark.parametrize("batch", [1, 5, 10_000])
def test_a_reading_in_a_settle_window_neither_clears_nor_raises(batch):
    eng, _ = setup()
    # Raised in ramp; inside during deposit's settle window (10..12 s): nothing; at 12 s
    # deposit's limits apply and 64 is inside 59..65: cleared by deposit's limit.
    events = drive(eng, [5000, 9000, 10_000, 11_000, 11_900, 12_000, 13_000],
                   [64.0, 64.0, 60.0, 99.0, 10.0, 64.0, 64.0], batch)
    assert summary(events) == [("raised", "high", 5000, 63.0, "ramp", ""),
                               ("cleared", "high", 12_000, 65.0, "deposit", "")]
    # A settle window does not raise either: 10 in cool's settle window (40..42 s) is nothing.
    assert drive(eng, [40_500, 41_000], [10.0, 10.0], batch) == []


def test_when_the_next_step_sees_the_other_kind_it_is_cleared_and_raised_the_other_way():
    eng, _ = setup("FLIP")
    # 60 is low in hot (77..83) and high in cold (37..43): at cold's first settled reading
    # the low excursion is cleared (60 >= 37) and a high one raised, as for fixed rules.
    events = drive(eng, [2000, 9000, 10_000, 10_500, 11_000, 12_000], [60.0] * 6, 100)
    assert summary(events) == [("raised", "low", 2000, 77.0, "hot", ""),
                               ("cleared", "low", 11_000, 37.0, "cold", ""),
                               ("raised", "high", 11_000, 43.0, "cold", "")]


def test_an_excursion_ends_with_the_run_and_the_note_says_so():
    eng, lots = setup()
    events = drive(eng, [3000, 8000, 11_000, 14_000], [50.0] * 4, 100)
    assert summary(events) == [("raised", "low", 3000, 57.0, "ramp", "")]
    lots.add(ContextEvent(ts=T0 + 15_000, machine=MACHINE, event="end", lot="L7", wafer="W01", recipe="DEP-B"))
    [e] = drive(eng, [14_500, 15_000, 16_000], [50.0] * 3, 100)
    assert (e.state, e.kind, e.ts - T0, e.threshold, e.note) == ("cleared", "low", 15_000, 57.0, "the lot run ended")
    assert (e.lot, e.step) == (None, None)
    assert eng.open_excursions() == []


def test_a_step_without_a_limit_for_the_kind_and_the_end_of_the_recipe_say_so():
    eng, _ = setup()
    # Low through ramp, deposit and anneal; purge (30..40 s) sets no temp limit: held through
    # its settle window, then cleared once purge applies, naming the step and the kind.
    offsets = list(range(3000, 33_000, 500))
    events = drive(eng, offsets, [50.0] * len(offsets), 10_000)
    assert summary(events) == [("raised", "low", 3000, 57.0, "ramp", ""),
                               ("cleared", "low", 32_000, 57.0, "purge", "step purge sets no limit for temp")]
    # 50 is high in cool (35..45, from 42 s); after cool, the recipe's last step, it has no step.
    later = drive(eng, [41_000, 42_000, 49_500, 50_000, 51_000], [50.0] * 5, 10_000)
    assert summary(later) == [("raised", "high", 42_000, 45.0, "cool", ""),
                              ("cleared", "high", 50_000, 45.0, None, "recipe DEP-B v1 ended (no step after cool)")]


def test_a_flapping_excursion_is_held_through_settle_windows_and_ends_with_the_run():
    eng, lots = setup(flap_window_ms=600_000, flap_max=1)
    # Two raises in ramp: the second is flapping (damped); it is held through deposit's
    # settle window (no quiet time counted there, no clear) and ends with the run, saying so.
    events = drive(eng, [3000, 4000, 5000, 9000, 10_500, 11_500, 12_500], [50.0, 60.0, 50.0, 60.0, 60.0, 60.0, 60.0],
                   100)
    assert [(e.state, e.flapping, e.ts - T0) for e in events] == [
        ("raised", False, 3000), ("cleared", False, 4000), ("raised", True, 5000)]
    lots.add(ContextEvent(ts=T0 + 20_000, machine=MACHINE, event="end", lot="L7", wafer="W01", recipe="DEP-B"))
    [e] = drive(eng, [21_000], [60.0], 100)
    assert (e.state, e.ts - T0, e.note) == ("cleared", 21_000, "the lot run ended")


_SETTLE_WINDOWS = [(0, 2000), (10_000, 12_000), (20_000, 22_000), (30_000, 32_000), (40_000, 42_000)]
_END_NOTES = {"the lot run ended", "step purge sets no limit for temp", "recipe DEP-B v1 ended (no step after cool)"}


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.sampled_from([30.0, 50.0, 55.0, 56.0, 58.0, 60.0, 63.5, 64.0, 66.0, 70.0]),
                       min_size=1, max_size=30),
       cuts=st.lists(st.integers(0, 240), max_size=5), hysteresis=st.sampled_from([0.0, 0.5]),
       end_at=st.sampled_from([None, 27_000, 45_000]))
def test_no_event_in_a_settle_window_and_a_clear_by_the_value_is_inside_its_threshold(values, cuts, hysteresis,
                                                                                       end_at):
    eng, lots = setup(hysteresis=hysteresis)
    if end_at is not None:
        lots.add(ContextEvent(ts=T0 + end_at, machine=MACHINE, event="end", lot="L7", wafer="W01", recipe="DEP-B"))
    # Runs of equal values, 250 ms apart, from 0 to 60 s: every step, boundary and settle window.
    offsets = list(range(0, 60_000, 250))
    x = [values[(i * len(values)) // len(offsets)] for i in range(len(offsets))]
    bounds = sorted({0, len(offsets), *cuts})
    events = []
    for a, b in pairwise(bounds):
        events.extend(drive(eng, offsets[a:b], x[a:b], 10_000))
    assert [e.state for e in events] == ["raised", "cleared"] * (len(events) // 2) + ["raised"] * (len(events) % 2)
    for e in events:
        offset = e.ts - T0
        assert not any(a <= offset < b for a, b in _SETTLE_WINDOWS if end_at is None or a < end_at), e
        if e.state == "cleared" and not e.note:  # the value came back: inside what it reports
            assert (e.value <= e.threshold) if e.kind == "high" else (e.value >= e.threshold), e
        elif e.state == "cleared":
            assert e.note in _END_NOTES, e
