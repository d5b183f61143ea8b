import numpy as np

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


def test_readings_older_than_the_covered_window_are_unverified_not_dropped():
    hot = ring(window_ms=1_000, covered_from=BASE)
    hot.insert(arr(0, 0, dtype=np.int32), arr(BASE + 1_000, BASE + 5_000), arr(0.0, 1.0, dtype=np.float64))
    # BASE+1000 left the window, which now starts at BASE+4000: a reading at BASE+3000
    # cannot be checked here.
    keep, verified = hot.insert(arr(0, 0, dtype=np.int32), arr(BASE + 3_000, BASE + 5_000),
                                arr(2.0, 3.0, dtype=np.float64))
    assert keep.tolist() == [True, False] and verified.tolist() == [False, True]
    ts, _ = hot.series(0)
    assert ts.tolist() == [BASE + 5_000]


def test_window_trims_old_readings_and_budget_bounds_memory():
    hot = ring(window_ms=100, budget=16 * 1000)
    for step in range(50):
        ts = BASE + step * 10 + np.arange(10)
        hot.insert(np.zeros(10, np.int32), ts, np.ones(10))
    ts, _ = hot.series(0)
    assert ts[0] >= ts[-1] - 100
    hot = ring(window_ms=10**9, budget=16 * 1000)
    for step in range(50):
        hot.insert(np.full(100, step % 3, np.int32), BASE + step * 100 + np.arange(100), np.ones(100))
    assert len(hot) <= 1000


def test_series_downsamples_to_the_requested_points():
    hot = ring()
    hot.insert(np.zeros(1000, np.int32), BASE + np.arange(1000), np.arange(1000, dtype=np.float64))
    ts, value = hot.series(0, since=BASE + 500, points=10)
    assert len(ts) == 10 and ts[0] == BASE + 500
    assert value[0] == np.mean(np.arange(500, 550))
