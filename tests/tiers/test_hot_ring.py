import numpy as np
import pytest

from tiers.hot import HotRing

BASE = 1_764_000_000_000


def ring(window_ms=60_000, budget=1 << 30, covered_from=BASE - 60_000):
    return HotRing(window_ms=window_ms, memory_budget=budget, covered_from=covered_from)


def arr(*values, dtype=np.int64):
    return np.array(values, dtype=dtype)


def test_duplicates_within_a_batch_and_across_batches_are_dropped():
    hot = ring()
    keep, verified = hot.insert(arr(0, 0, 1, 0, dtype=np.int32), arr(BASE, BASE + 1, BASE, BASE),
                                arr(1.0, 2.0, 3.0, 9.0, dtype=np.float64))
    assert keep.tolist() == [True, True, True, False] and verified.all()
    keep, _ = hot.insert(arr(1, 1, dtype=np.int32), arr(BASE, BASE + 5), arr(7.0, 8.0, dtype=np.float64))
    assert keep.tolist() == [False, True]
    assert len(hot) == 4
    ts, value = hot.series(0)
    assert ts.tolist() == [BASE, BASE + 1] and value.tolist() == [1.0, 2.0]


def test_out_of_order_readings_are_merged_in_order():
    hot = ring()
    hot.insert(arr(0, 0, dtype=np.int32), arr(BASE + 10, BASE + 30), arr(1.0, 3.0, dtype=np.float64))
    keep, _ = hot.insert(arr(0, 0, dtype=np.int32), arr(BASE + 20, BASE + 30), arr(2.0, 9.0, dtype=np.float64))
    assert keep.tolist() == [True, False]
    ts, value = hot.series(0)
    assert ts.tolist() == [BASE + 10, BASE + 20, BASE + 30] and value.tolist() == [1.0, 2.0, 3.0]


def test_readings_pushed_out_by_the_budget_are_unverified_not_dropped():
    hot = ring(window_ms=10**9, budget=16 * 4 * 64)  # 4 slots for each of the first 64 sensors
    hot.insert(np.zeros(10, np.int32), BASE + np.arange(10), np.arange(10, dtype=np.float64))
    assert hot.covered_from(0) == BASE + 6
    keep, verified = hot.insert(arr(0, 0, dtype=np.int32), arr(BASE + 3, BASE + 7), arr(2.0, 3.0, dtype=np.float64))
    assert keep.tolist() == [True, False] and verified.tolist() == [False, True]
    ts, _ = hot.series(0)
    assert ts.tolist() == [BASE + 6, BASE + 7, BASE + 8, BASE + 9]


def test_capacity_follows_the_window_and_memory_stays_in_the_budget():
    hot = ring(window_ms=1000, budget=1 << 30)
    for step in range(100):  # 1 reading/ms for 5 s: the window needs ~1000 slots
        hot.insert(np.zeros(50, np.int32), BASE + step * 50 + np.arange(50), np.ones(50))
    ts, _ = hot.series(0)
    assert ts[-1] - ts[0] >= 1000 and hot.capacity <= 2048
    hot = ring(window_ms=10**9, budget=16 * 1000)
    for step in range(50):
        hot.insert(np.full(100, step % 3, np.int32), BASE + step * 100 + np.arange(100), np.ones(100))
    assert hot.memory_bytes <= 16 * 1000 and len(hot) <= 1000


def test_series_downsamples_to_the_requested_points():
    hot = ring()
    hot.insert(np.zeros(1000, np.int32), BASE + np.arange(1000), np.arange(1000, dtype=np.float64))
    ts, value = hot.series(0, since=BASE + 500, points=10)
    assert len(ts) == 10 and ts[0] == BASE + 500
    assert value[0] == np.mean(np.arange(500, 550))


def test_random_streams_match_a_set_model():
    """Against a plain Python model: same kept rows and same contents, any arrival order."""
    rng = np.random.default_rng(7)
    hot = ring(window_ms=10**12, budget=1 << 30)
    seen: dict[int, dict[int, float]] = {}
    for _ in range(200):
        n = int(rng.integers(1, 60))
        keys = rng.integers(0, 5, n).astype(np.int32)
        ts = BASE + rng.integers(0, 400, n)
        values = rng.random(n)
        keep, verified = hot.insert(keys, ts, values)
        assert verified.all()
        for i in range(n):
            first = ts[i] not in seen.setdefault(int(keys[i]), {})
            assert keep[i] == first
            if first:
                seen[int(keys[i])][int(ts[i])] = values[i]
    for key, readings in seen.items():
        ts, value = hot.series(key)
        assert ts.tolist() == sorted(readings)
        assert value.tolist() == [readings[t] for t in sorted(readings)]


@pytest.mark.parametrize("window_ms, budget", [
    (10**12, 1 << 22),  # growing
    (60, 1 << 12),  # wrapping rows, the window short enough not to grow for
    (200, 1 << 22),  # wrapping rows, growing when what is left is inside the window
    (10**12, 1 << 12),  # wrapping rows that the budget cannot grow for
])
def test_coded_fast_path_matches_the_general_path(monkeypatch, window_ms, budget):
    """The compiled path from a batch's codes stores exactly what the general path stores,
    or declines (changing nothing)."""
    from tiers import hot as hot_module

    monkeypatch.setattr(hot_module, "_compiled", None)  # restored after the test, whatever it sets
    hot_module.use_compiled_writes()
    assert hot_module._compiled is not None
    rng = np.random.default_rng(11)
    fast, general = ring(window_ms=window_ms, budget=budget), ring(window_ms=window_ms, budget=budget)
    key_of_code = np.array([3, 0, 2, 1], dtype=np.int32)  # a batch's names are not in key order
    clock, declined = BASE, 0
    for step in range(300):
        n = int(rng.integers(4, 80))
        codes = rng.integers(0, len(key_of_code), n).astype(np.uint32)
        # Mostly increasing per sensor; now and then a step back in time or a repeat.
        ts = clock + np.arange(n) * int(rng.integers(1, 3))
        if step % 7 == 0:
            ts = ts - int(rng.integers(0, 50))
        clock = int(ts.max()) + 1
        values = rng.random(n)
        masks = fast.insert_coded(key_of_code, codes, ts, values)
        if masks is None:
            declined += 1
            masks = fast.insert(key_of_code[codes], ts, values)
        expected = general.insert(key_of_code[codes], ts, values)
        assert masks[0].tolist() == expected[0].tolist() and masks[1].tolist() == expected[1].tolist()
    assert 0 < declined < 300
    for key in range(4):
        assert [a.tolist() for a in fast.series(key)] == [a.tolist() for a in general.series(key)]
        assert fast.covered_from(key) == general.covered_from(key)
    assert fast.capacity == general.capacity and len(fast) == len(general)


def test_the_coded_path_declines_without_the_compiled_writes(monkeypatch):
    from tiers import hot as hot_module

    monkeypatch.setattr(hot_module, "_compiled", None)
    hot = ring(window_ms=10**9, budget=1 << 22)
    assert hot.insert_coded(np.array([0], np.int32), np.zeros(3, np.uint32), BASE + np.arange(3), np.ones(3)) is None
    assert len(hot) == 0


def test_growing_before_a_wrap_moves_no_reading():
    """The window fills up: capacity doubles several times, but no reading is copied (the
    rows are reserved up front), and every reading is still there, in order."""
    hot = ring(window_ms=10**9, budget=1 << 26)
    store = hot._slots  # what a copy would replace
    sensors = np.arange(10, dtype=np.int32)
    for step in range(40):  # 100 readings per sensor per step
        ts = BASE + step * 100 + np.arange(100)
        hot.insert(np.repeat(sensors, 100), np.tile(ts, 10), np.tile(ts.astype(np.float64), 10))
    assert hot.capacity >= 4000 and hot._slots is store
    for key in sensors.tolist():
        ts, value = hot.series(int(key))
        assert ts.tolist() == list(range(BASE, BASE + 4000)) and np.array_equal(value, ts.astype(np.float64))
    # then wrapping at the budget's limit keeps the newest, as before
    cap = hot._reserved
    for step in range(40, 40 + 2 * cap // 100):
        ts = BASE + step * 100 + np.arange(100)
        hot.insert(np.repeat(sensors, 100), np.tile(ts, 10), np.tile(ts.astype(np.float64), 10))
    ts, _ = hot.series(0)
    assert len(ts) == hot.capacity and ts[-1] == BASE + (40 + 2 * cap // 100) * 100 - 1
    assert np.all(np.diff(ts) == 1) and hot.memory_bytes <= 1 << 26


def test_series_of_a_wrapped_row_cuts_both_runs():
    hot = ring(window_ms=10**9, budget=16 * 8 * 64)  # 8 slots for each of the first 64 sensors
    for step in range(13):  # 13 readings: the row wrapped, holding the newest 8
        hot.insert(arr(0, dtype=np.int32), arr(BASE + 10 * step), arr(float(step), dtype=np.float64))
    held = [BASE + 10 * s for s in range(5, 13)]
    assert hot.series(0)[0].tolist() == held
    for since, until in [(BASE + 55, BASE + 95), (BASE + 80, None), (None, BASE + 70), (BASE + 200, None),
                         (BASE, BASE + 40)]:
        expected = [t for t in held if (since is None or t >= since) and (until is None or t <= until)]
        ts, value = hot.series(0, since=since, until=until)
        assert ts.tolist() == expected
        assert value.tolist() == [(t - BASE) / 10 for t in expected]
    ts, value = hot.series(0, points=4)
    assert ts.tolist() == held[::2] and value.tolist() == [5.5, 7.5, 9.5, 11.5]


def test_reads_without_the_lock_never_see_a_row_half_written():
    """A writer thread appends (and wraps) while a reader queries without any lock: every
    answer is one consistent state of the row (ascending, gapless, value == ts)."""
    import sys
    import threading

    from tiers import hotkernel

    hotkernel.warm()  # compiling inside the reader would leave the writer alone for seconds
    sensors, per_sensor = 64, 200
    rings = [ring()]
    keys = np.repeat(np.arange(sensors, dtype=np.int32), per_sensor)
    stop = threading.Event()
    failures: list[str] = []
    answers = [0]

    def write() -> None:
        # Each round starts a ring whose rows wrap, then adds sensors until the budget halves
        # every row: re-laying wrapped rows is the ring's longest change, in Python loops.
        while not stop.is_set():
            hot_now = ring(window_ms=100, budget=16 * 64 * 512)
            rings[0] = hot_now
            for step in range(40):
                if stop.is_set():
                    return
                ts = BASE + step * per_sensor + np.tile(np.arange(per_sensor), sensors)
                hot_now.insert(keys + (step // 5) * sensors, ts, ts.astype(np.float64))

    def read() -> None:
        rng = np.random.default_rng(3)
        while answers[0] < 2000 and not failures:
            answer = rings[0].read_series(int(rng.integers(8 * sensors)))
            if answer is None:
                continue
            ts, value = answer
            answers[0] += 1
            if len(ts) and not ((np.diff(ts) == 1).all() and (value == ts).all()):
                failures.append(f"torn read: {ts[:5]}... {value[:5]}...")

    writer, reader = threading.Thread(target=write), threading.Thread(target=read)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the interpreter over between nearly any two bytecodes
    try:
        writer.start()
        reader.start()
        reader.join(timeout=60)
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(switch)
    assert not failures, failures[0]
    assert answers[0] == 2000


def test_a_read_that_a_write_overlaps_is_not_answered(monkeypatch):
    """The end check: a write (or a change of layout) that lands while the query runs, as a
    numpy call the writer started without the interpreter lock would, voids the answer."""
    from tiers import hotkernel

    hot = ring()
    hot.insert(np.zeros(10, np.int32), BASE + np.arange(10), np.arange(10, dtype=np.float64))
    compute = hotkernel.ring_series
    for overlapping in (
            lambda: hot.insert(arr(0, dtype=np.int32), arr(BASE + 20), arr(1.0, dtype=np.float64)),
            lambda: hot.insert(arr(500, dtype=np.int32), arr(BASE), arr(1.0, dtype=np.float64))):
        def query_overlapped(*args, write=overlapping):
            write()
            return compute(*args)
        monkeypatch.setattr(hotkernel, "ring_series", query_overlapped)
        assert hot.read_series(0) is None
        monkeypatch.setattr(hotkernel, "ring_series", compute)
        assert hot.read_series(0) is not None
    # A write to another row leaves the answer standing.
    monkeypatch.setattr(hotkernel, "ring_series", lambda *args: (
        hot.insert(arr(1, dtype=np.int32), arr(BASE + 30), arr(1.0, dtype=np.float64)), compute(*args))[1])
    assert hot.read_series(0)[0].tolist() == (BASE + np.arange(10)).tolist() + [BASE + 20]


def test_a_read_beside_an_append_in_progress_leaves_out_the_slots_it_writes_over():
    """What a reader sees between an append's announcement and its last slot: the readings
    the append writes over are left out, the rest are answered, and nothing is retried."""
    hot = ring(window_ms=10, budget=16 * 8 * 64)  # 8 slots a row
    hot.insert(np.zeros(12, np.int32), BASE + np.arange(12), np.arange(12, dtype=np.float64))
    assert hot.read_series(0)[0].tolist() == (BASE + np.arange(4, 12)).tolist()
    # An append of 3 readings, announced, its first slot written, the rest not yet.
    hot._pending[0] = 15
    hot._ts[0, 12 % 8] = BASE + 12
    hot._value[0, 12 % 8] = 12.0
    ts, value = hot.read_series(0)
    assert ts.tolist() == (BASE + np.arange(7, 12)).tolist() and value.tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
