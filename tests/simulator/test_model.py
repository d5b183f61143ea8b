import dataclasses
import re
from collections import defaultdict
from itertools import pairwise

import numpy as np
import pytest

from simulator.catalog import MACHINE_KINDS
from simulator.model import FabModel, SimConfig, sensor_layout

START = 1_764_000_000_000


def run(config: SimConfig, seconds: float, steps=None, **kwargs):
    """Advance a model through `seconds` (in the given step sizes, ms, cycled) and collect
    per machine {sensor: (ts, value)} plus the context events and the model."""
    model = FabModel(config, START, **kwargs)
    end = START + int(seconds * 1000)
    t, i = START, 0
    parts, events = defaultdict(list), []
    while t < end:
        t = min(end, t + (steps[i % len(steps)] if steps else end - START))
        i += 1
        blocks, evs = model.advance(t)
        events += evs
        for b in blocks:
            parts[b.machine].append((b.sensor, b.ts, b.value))
    data = {}
    for machine, chunks in parts.items():
        sensor = np.concatenate([c[0] for c in chunks])
        ts = np.concatenate([c[1] for c in chunks])
        value = np.concatenate([c[2] for c in chunks])
        data[machine] = {s: (ts[sensor == s], value[sensor == s]) for s in model.sensors(machine)}
    return data, events, model


def assert_same(a, b):
    assert a.keys() == b.keys()
    for machine in a:
        assert a[machine].keys() == b[machine].keys()
        for s in a[machine]:
            np.testing.assert_array_equal(a[machine][s][0], b[machine][s][0])
            np.testing.assert_array_equal(a[machine][s][1], b[machine][s][1])


CFG = SimConfig(machines=3, sensors_per_machine=6, rate_hz=20.0, seed=7,
                excursion_rate=200.0, fault_rate=100.0)


def test_same_seed_same_data_different_seed_different_data():
    a, ev_a, _ = run(CFG, 60)
    b, ev_b, _ = run(CFG, 60)
    assert_same(a, b)
    assert ev_a == ev_b and ev_a
    c, ev_c, _ = run(dataclasses.replace(CFG, seed=8), 60)
    assert not np.array_equal(a["etch-01"]["ch1/temp"][1][:100], c["etch-01"]["ch1/temp"][1][:100])
    assert ev_a != ev_c


@pytest.mark.parametrize("steps", [[1], [7, 13, 500, 1], [20, 1000, 3333], [250]])
def test_advance_step_size_does_not_change_the_data(steps):
    whole, ev_whole, _ = run(CFG, 30)
    stepped, ev_stepped, _ = run(CFG, 30, steps)
    assert_same(whole, stepped)
    assert ev_whole == ev_stepped


def test_advance_returns_each_nominal_instant_once_and_blocks_sorted_by_ts():
    config = SimConfig(machines=2, sensors_per_machine=3, rate_hz=10.0, excursion_rate=0,
                       fault_rate=0)
    model = FabModel(config, START)
    counts = []
    for until in (START + d for d in (0, 1, 100, 101, 250, 250, 1000)):
        blocks, _ = model.advance(until)
        for b in blocks:
            assert np.all(np.diff(b.ts) >= 0)
            assert b.ts.dtype == np.int64 and b.value.dtype == np.float64
        counts.append(sum(len(b) for b in blocks))
    # nominal instants every 100 ms from START: [0,1) -> 1, [1,100) -> 0, [100,101) -> 1, ...
    assert counts == [0, 6, 0, 6, 6, 0, 6 * 7]
    assert model.advance(START + 500) == ([], [])  # going back yields nothing


@pytest.mark.parametrize("rate_hz", [1000.0, 999.0, 500.0, 333.0, 64.0, 10.0, 0.7])
def test_per_sensor_timestamps_strictly_increase(rate_hz):
    config = SimConfig(machines=1, sensors_per_machine=3, rate_hz=rate_hz, jitter=0.5,
                       excursion_rate=0, fault_rate=0)
    seconds = 20 if rate_hz < 1 else 3
    data, _, _ = run(config, seconds, [37, 211])
    for ts, _ in data["etch-01"].values():
        assert len(ts) >= int(rate_hz * seconds) - 1
        assert np.all(np.diff(ts) > 0)
        assert ts[0] >= START and ts[-1] < START + seconds * 1000 + 1000 / rate_hz


def test_rates_above_one_per_ms_are_rejected():
    with pytest.raises(ValueError):
        SimConfig(rate_hz=1001)
    with pytest.raises(ValueError):
        FabModel(SimConfig())  # no start time anywhere


def test_values_are_rounded_to_the_sensor_resolution():
    data, _, model = run(SimConfig(machines=3, sensors_per_machine=12, rate_hz=20), 60)
    for machine, sensors in data.items():
        for s, (_, v) in sensors.items():
            d = model.sensor_kind(machine, s).decimals
            np.testing.assert_array_equal(np.round(v, d), v)
            # the shortest text of each double has at most `d` decimals
            assert all(len(repr(x).partition(".")[2]) <= max(d, 1) for x in v.tolist())


# 3 Hz and 1000/7 Hz: n * period is not a whole ms, and float rounding can put it a hair
# outside its frame
@pytest.mark.parametrize("rate_hz, seconds", [(5, 600), (3, 300), (1000 / 7, 60)])
def test_values_stay_near_recipe_windows_without_anomalies_and_in_range_with_them(rate_hz, seconds):
    def windows(kind):
        out = {}
        for k in kind.sensors:
            pairs = [k.idle] + [st.setpoints[k.quantity] for r in kind.recipes for st in r.steps
                                if k.quantity in st.setpoints]
            out[k.quantity] = (min(sp - 3 * tol for sp, tol in pairs),
                               max(sp + 3 * tol for sp, tol in pairs))
        return out

    quiet = SimConfig(machines=3, sensors_per_machine=20, rate_hz=rate_hz, excursion_rate=0,
                      fault_rate=0)
    data, _, model = run(quiet, seconds)
    for machine, sensors in data.items():
        limits = windows(next(k for k in MACHINE_KINDS if machine.startswith(k.prefix + "-")))
        for s, (_, v) in sensors.items():
            lo, hi = limits[model.sensor_kind(machine, s).quantity]
            assert lo <= v.min() and v.max() <= hi, (machine, s, v.min(), v.max(), lo, hi)
    busy = dataclasses.replace(quiet, excursion_rate=300, fault_rate=300)
    data, _, model = run(busy, seconds)
    for machine, sensors in data.items():
        for s, (_, v) in sensors.items():
            k = model.sensor_kind(machine, s)
            assert k.lo <= v.min() and v.max() <= k.hi
            assert np.isfinite(v).all()


def test_excursions_leave_the_tolerance_and_touch_nothing_else():
    base = dict(machines=3, sensors_per_machine=8, rate_hz=20, seed=3, fault_rate=0, jitter=0)
    clean, _, _ = run(SimConfig(**base, excursion_rate=0), 600)
    dirty, _, model = run(SimConfig(**base, excursion_rate=60), 600, record_anomalies=True)
    kinds = {a.kind for a in model.anomalies}
    assert kinds == {"spike", "ramp"} and {a.category for a in model.anomalies} == {"excursion"}
    changed = np.zeros(0, dtype=bool)
    for machine in clean:
        kind = next(k for k in MACHINE_KINDS if machine.startswith(k.prefix + "-"))
        for s, (ts, v) in clean[machine].items():
            ts2, v2 = dirty[machine][s]
            np.testing.assert_array_equal(ts, ts2)  # excursions never add or drop readings
            inside = np.zeros(len(ts), dtype=bool)
            sk = model.sensor_kind(machine, s)
            min_tol = min([sk.idle[1]] + [st.setpoints[sk.quantity][1] for r in kind.recipes
                                          for st in r.steps if sk.quantity in st.setpoints])
            mine = [a for a in model.anomalies if (a.machine, a.sensor) == (machine, s)]
            for a in mine:
                window = (ts >= a.start_ms) & (ts < a.end_ms - 1)
                inside |= (ts >= a.start_ms - 1) & (ts < a.end_ms)
                if not window.any() or overlapping(a, mine):
                    continue  # overlapping excursions may cancel out
                dev = np.abs(v2[window] - v[window])
                # clipping to the transducer's range may eat part of the offset
                at_bound = np.isin(v[window], (sk.lo, sk.hi)) | np.isin(v2[window], (sk.lo, sk.hi))
                if a.kind == "spike":  # every reading of a spike is beyond tolerance
                    assert np.all((dev >= 1.5 * min_tol - sk.resolution) | at_bound)
                else:  # a ramp gets there
                    assert dev.max() >= 1.5 * min_tol - sk.resolution or at_bound.any()
            np.testing.assert_array_equal(v[~inside], v2[~inside])
            changed = np.concatenate([changed, v != v2])
    assert changed.any()


def overlapping(a, anomalies) -> bool:
    return any(b is not a and b.start_ms < a.end_ms and a.start_ms < b.end_ms for b in anomalies
               if (b.machine, b.sensor) == (a.machine, a.sensor))


def test_sensor_faults_stick_drop_and_glitch():
    base = dict(machines=3, sensors_per_machine=6, rate_hz=10, seed=5, excursion_rate=0, jitter=0)
    clean, _, _ = run(SimConfig(**base, fault_rate=0), 900)
    faulty, _, model = run(SimConfig(**base, fault_rate=30), 900, record_anomalies=True)
    seen = defaultdict(int)
    for a in model.anomalies:
        ts, v = faulty[a.machine][a.sensor]
        window = (ts >= a.start_ms) & (ts < a.end_ms - 1)
        if overlapping(a, model.anomalies) or a.end_ms > START + 900_000:
            continue
        seen[a.kind] += 1
        if a.kind == "dropout":
            assert not window.any()
            assert len(ts) < len(clean[a.machine][a.sensor][0])
        elif a.kind == "stuck":
            assert window.sum() >= 40 and len(np.unique(v[window])) == 1
        else:  # glitch: exactly one reading far off, towards full scale
            k = model.sensor_kind(a.machine, a.sensor)
            ts0, v0 = clean[a.machine][a.sensor]
            hit = np.flatnonzero((ts >= a.start_ms) & (ts < a.end_ms))  # exact: integer ms period
            assert len(hit) == 1
            before = v0[np.searchsorted(ts0, ts[hit[0]])]
            assert (abs(v[hit[0]] - before) >= 0.2 * (k.hi - k.lo) - k.resolution
                    or v[hit[0]] in (k.lo, k.hi))
    assert seen["dropout"] >= 3 and seen["stuck"] >= 3 and seen["glitch"] >= 3


def test_wafer_context_events_alternate_per_machine():
    data, events, model = run(SimConfig(machines=6, sensors_per_machine=2, rate_hz=1), 3 * 3600)
    assert events == sorted(events, key=lambda e: e.ts)
    by_machine = defaultdict(list)
    for e in events:
        by_machine[e.machine].append(e)
    assert set(by_machine) == set(model.machines)
    lots = defaultdict(set)
    for machine, evs in by_machine.items():
        kind = next(k for k in MACHINE_KINDS if machine.startswith(k.prefix + "-"))
        assert [e.event for e in evs] == (["start", "end"] * len(evs))[:len(evs)]
        # strict=False: the last wafer may have started and not yet ended
        for start, end in zip(evs[::2], evs[1::2], strict=False):
            assert (start.lot, start.wafer, start.recipe) == (end.lot, end.wafer, end.recipe)
            assert start.ts < end.ts
        for e in evs:
            assert re.fullmatch(r"L\d{4}-[0-9A-Z]{4}-\d{2,}", e.lot)
            assert re.fullmatch(r"W(0[1-9]|1\d|2[0-5])", e.wafer)
            assert e.recipe in {r.name for r in kind.recipes}
            lots[e.lot].add(machine)
        starts = [e for e in evs if e.event == "start"]
        for prev, cur in pairwise(starts):  # wafers count up within a lot
            if prev.lot == cur.lot:
                assert int(cur.wafer[1:]) == int(prev.wafer[1:]) + 1
            else:
                assert cur.wafer == "W01"
    assert all(len(ms) == 1 for ms in lots.values())  # lot ids are unique in the fab
    assert len(lots) > len(model.machines)


def _lots(start_ms: int) -> set[tuple[str, str]]:
    model = FabModel(SimConfig(machines=3, sensors_per_machine=1, rate_hz=1, seed=7), start_ms)
    _, events = model.advance(start_ms + 600_000)
    return {(e.lot, e.wafer) for e in events if e.event == "start"}


def test_runs_started_apart_never_share_a_lot_id():
    # Every run of the simulator used to start at lot 01 of the week: lot_runs then held the
    # same (lot, wafer) twice, with different recipes.
    first, again, later = _lots(START), _lots(START), _lots(START + 60_000)
    assert first and first == again  # deterministic for one start
    assert not {lot for lot, _ in first} & {lot for lot, _ in later}


def test_machine_and_sensor_names():
    model = FabModel(SimConfig(machines=7, sensors_per_machine=5), START)
    assert model.machines == ["etch-01", "cvd-01", "litho-01", "etch-02", "cvd-02", "litho-02",
                              "etch-03"]
    assert model.sensors("etch-01") == ["ch1/temp", "ch1/pressure", "rf/forward_power",
                                        "gas/ar_flow", "stage/vibration"]
    for kind in MACHINE_KINDS:
        names = [n for n, _ in sensor_layout(kind, 60)]
        assert len(set(names)) == 60 and "ch2/temp" in names
        assert all(re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_]+)+", n) for n in names)
        quantities = {k.quantity for k in kind.sensors}
        for recipe in kind.recipes:  # recipe steps only name sensors the machine kind has
            assert all(set(step.setpoints) <= quantities for step in recipe.steps)
    assert model.sensor_kind("etch-01", "ch1/temp").unit == "degC"
    assert model.sensor_kind("etch-01", "ch1/temp").resolution == pytest.approx(0.01)
