"""The compiled series query against a plain numpy statement of what it must answer."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tiers import hotkernel
from tiers.hotkernel import ring_bands, ring_series


def reference(ts_row, value_row, first, end, since, until, points):
    """Linearise the circular row, keep since <= ts <= until, bucket [b*m//P, (b+1)*m//P)."""
    cap = len(ts_row)
    slots = np.arange(first, end) % cap
    ts, value = ts_row[slots], value_row[slots]
    keep = (ts >= since) & (ts <= until)
    ts, value = ts[keep], value[keep]
    m = len(ts)
    if points < 1 or m <= points:
        return ts, value
    edges = (m * np.arange(points + 1)) // points
    return ts[edges[:-1]], np.array([value[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])


def circular_row(cap, written, rng):
    """A row of `cap` slots after `written` ascending readings were appended to it."""
    ts_row = np.zeros(cap, np.int64)
    value_row = np.zeros(cap, np.float64)
    stream_ts = np.cumsum(rng.integers(1, 5, written)) + 1_000
    stream_value = rng.normal(size=written)
    for i in range(written):
        ts_row[i % cap], value_row[i % cap] = stream_ts[i], stream_value[i]
    return ts_row, value_row, stream_ts


def case(cap, written, since_at, until_at, seed, left_out):
    """A row, the first reading a reader takes (the row's last `cap` readings, less up to
    `left_out` of the oldest, as a reader leaves out those an append in progress writes over),
    and a span placed relative to the readings written."""
    ts_row, value_row, stream_ts = circular_row(cap, written, np.random.default_rng(seed))
    lo_ts, hi_ts = (int(stream_ts[0]), int(stream_ts[-1])) if written else (0, 10)
    first = min(max(written - cap, 0) + left_out, written)
    return (ts_row, value_row, first, int(lo_ts + since_at * (hi_ts - lo_ts)),
            int(lo_ts + until_at * (hi_ts - lo_ts)))


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(1, 64), written=st.integers(0, 300), points=st.integers(0, 40),
       since_at=st.floats(-0.2, 1.2), until_at=st.floats(-0.2, 1.2), seed=st.integers(0, 2**16),
       left_out=st.integers(0, 64))
def test_matches_the_reference_on_wrapped_and_unwrapped_rows(cap, written, points, since_at, until_at, seed,
                                                             left_out):
    ts_row, value_row, first, since, until = case(cap, written, since_at, until_at, seed, left_out)
    got_ts, got_value = ring_series(ts_row, value_row, first, written, since, until, points)
    want_ts, want_value = reference(ts_row, value_row, first, written, since, until, points)
    assert got_ts.tolist() == want_ts.tolist()
    np.testing.assert_allclose(got_value, want_value, rtol=1e-12, atol=1e-12)


def test_a_bucket_that_wraps_around_the_end_of_the_row_averages_both_parts():
    ts_row = np.array([8, 9, 10, 5, 6, 7], np.int64)  # oldest at slot 3: 5 6 7 | 8 9 10
    value_row = np.array([80, 90, 100, 50, 60, 70], np.float64)
    got_ts, got_value = ring_series(ts_row, value_row, 3, 9, 0, 100, 2)
    assert got_ts.tolist() == [5, 8] and got_value.tolist() == [60.0, 90.0]
    got_ts, got_value = ring_series(ts_row, value_row, 3, 9, 6, 9, 1)  # 6 7 | 8 9
    assert got_ts.tolist() == [6] and got_value.tolist() == [75.0]


def bands_reference(ts_row, value_row, first, end, since, until, bucket_ms):
    """DuckDB's GROUP BY of the same readings, as the dashboard's SQL asks it."""
    import duckdb

    cap = len(ts_row)
    slots = np.arange(first, end) % cap
    con = duckdb.connect()
    con.register("r", {"ts": ts_row[slots], "value": value_row[slots]})
    rows = con.execute(f"SELECT (ts // {bucket_ms}) * {bucket_ms} AS t, min(value), max(value), avg(value), "
                       f"count(*) FROM r WHERE ts BETWEEN {since} AND {until} GROUP BY t ORDER BY t").fetchall()
    con.close()
    return rows


@settings(max_examples=200, deadline=None)
@given(cap=st.integers(1, 64), written=st.integers(0, 300), bucket_ms=st.integers(1, 40),
       since_at=st.floats(-0.2, 1.2), until_at=st.floats(-0.2, 1.2), seed=st.integers(0, 2**16),
       left_out=st.integers(0, 64))
def test_bands_match_sqls_buckets(cap, written, bucket_ms, since_at, until_at, seed, left_out):
    ts_row, value_row, first, since, until = case(cap, written, since_at, until_at, seed, left_out)
    t, mn, mx, av, n = ring_bands(ts_row, value_row, first, written, since, until, bucket_ms)
    want = bands_reference(ts_row, value_row, first, written, since, until, bucket_ms)
    assert t.tolist() == [r[0] for r in want] and n.tolist() == [r[4] for r in want]
    assert mn.tolist() == [r[1] for r in want] and mx.tolist() == [r[2] for r in want]
    np.testing.assert_allclose(av, [r[3] for r in want], rtol=1e-12, atol=1e-12)


def test_a_compiled_append_that_wraps_moves_covered_and_says_when_to_grow():
    from tiers.hotkernel import coded_append, coded_check

    def state():  # one row of 4 slots (reserved 4) holding ts 100..103
        return (np.array([100, 101, 102, 103], np.int64), np.zeros(4, np.float64), np.array([4], np.int64),
                np.array([4], np.int64), np.array([103], np.int64), np.array([0], np.int64))

    key_of_code, codes = np.zeros(1, np.int32), np.zeros(2, np.uint32)
    ts, value = np.array([104, 105], np.int64), np.array([1.5, 2.5])
    for window, grows in ((10, True), (1, False)):
        ts_flat, value_flat, written, pending, last, covered = state()
        # pushes out 100 and 101: inside a 10 ms window of 105 (grow first), not a 1 ms one
        assert coded_check(last, covered, written, ts_flat, 4, key_of_code, codes, ts, 4, window) == int(grows)
        grow = coded_append(ts_flat, value_flat, 4, written, pending, last, covered, key_of_code, codes,
                            ts, value, 4, window)
        assert grow is grows  # the oldest left (102) is inside a 10 ms window of 105, not a 1 ms one
        assert ts_flat.tolist() == [104, 105, 102, 103] and value_flat.tolist() == [1.5, 2.5, 0.0, 0.0]
        assert written.tolist() == pending.tolist() == [6] and last.tolist() == [105] and covered.tolist() == [102]
    ts_flat, value_flat, written, pending, last, covered = state()
    for bad in ([103, 105], [106, 105], [105, 105]):  # not newer than the row; out of order; repeated
        assert coded_check(last, covered, written, ts_flat, 4, key_of_code, codes, np.array(bad, np.int64), 4, 1) == -1


def test_a_compiled_append_writes_interleaved_sensors_in_arrival_order():
    from tiers.hotkernel import coded_append, coded_check

    # two rows (keys 0 and 1) of 4 slots, empty; the batch's code 0 is key 1, code 1 key 0
    ts_flat, value_flat = np.zeros(8, np.int64), np.zeros(8, np.float64)
    written, pending = np.zeros(2, np.int64), np.zeros(2, np.int64)
    last, covered = np.full(2, -1, np.int64), np.zeros(2, np.int64)
    key_of_code, codes = np.array([1, 0], np.int32), np.array([0, 1, 1, 0, 1], np.uint32)
    ts, value = np.array([10, 11, 12, 13, 14], np.int64), np.arange(5, dtype=np.float64)
    assert coded_check(last, covered, written, ts_flat, 4, key_of_code, codes, ts, 4, 100) == 0
    assert not coded_append(ts_flat, value_flat, 4, written, pending, last, covered, key_of_code, codes,
                            ts, value, 4, 100)
    assert ts_flat.tolist() == [11, 12, 14, 0, 10, 13, 0, 0] and value_flat.tolist() == [1, 2, 4, 0, 0, 3, 0, 0]
    assert written.tolist() == pending.tolist() == [3, 2] and last.tolist() == [14, 13]


def test_the_compiled_count_of_ring_rows_is_numpys():
    rng = np.random.default_rng(4)
    written = rng.integers(0, 50, 1000).astype(np.int64)
    for keys, capacity in ((0, 16), (1, 16), (700, 16), (1000, 64), (1200, 8)):  # 1200: more keys than rows yet
        assert hotkernel.ring_rows(written, keys, capacity) == int(np.minimum(written[:keys], capacity).sum())
