"""The time test shared by the lake's files and the unsealed log's batches (tiers.timespan),
checked against its meaning: some t in [first, last] lies in [lo, hi]."""

import itertools

from tiers.timespan import span_may_hold


def test_a_span_may_hold_a_row_within_the_bounds_exactly_when_they_meet():
    ends = [None, 0, 5, 10, 15, 20]
    for first, last in [(5, 10), (10, 10), (0, 20), (12, 15)]:
        for lo, hi in itertools.product(ends, ends):
            low = -1 if lo is None else lo
            high = 21 if hi is None else hi
            meets = any(low <= t <= high for t in range(first, last + 1))
            assert span_may_hold(first, last, lo, hi) is meets, (first, last, lo, hi)


def test_an_empty_range_holds_nothing_even_inside_a_span():
    assert not span_may_hold(0, 100, 60, 40)
