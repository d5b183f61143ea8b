"""The compiled grouping of a batch's rows by sensor against numpy's: the same arrays, of
the same types, for any codes; and the codec uses the compiled one once it is warmed."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import grouping
from ingest.groupkernel import group_rows as compiled


@settings(max_examples=300, deadline=None)
@given(names=st.integers(1, 300), rows=st.integers(1, 600), seed=st.integers(0, 2**16))
def test_compiled_and_numpy_agree(names, rows, seed):
    codes = np.random.default_rng(seed).integers(0, names, rows).astype(np.uint32)
    want = grouping._with_numpy(codes, names)
    got = compiled(codes, names)
    for mine, theirs in zip(got, want, strict=True):
        assert mine.dtype == theirs.dtype and mine.tolist() == theirs.tolist()


def test_what_the_grouping_means():
    codes = np.array([2, 0, 2, 5, 0, 2], np.uint32)
    order, group_codes, counts, starts, row_group, rank = grouping.group_rows(codes, 6)
    assert order.tolist() == [1, 4, 0, 2, 5, 3]  # by sensor, each sensor's rows in their order
    assert group_codes.tolist() == [0, 2, 5] and counts.tolist() == [2, 3, 1] and starts.tolist() == [0, 2, 5]
    assert row_group.tolist() == [0, 0, 1, 1, 1, 2] and rank.tolist() == [0, 1, 0, 1, 2, 0]


def test_the_codec_groups_with_the_compiled_kernel_once_warmed(monkeypatch):
    from ingest.codec import Limits, decode_readings

    limits = Limits(max_future_ms=10**9, max_late_ms=10**9, max_payload=10**6)
    grouping.warm()
    calls = []
    kernel = grouping._compiled
    monkeypatch.setattr(grouping, "_compiled", lambda *a: calls.append(a) or kernel(*a))
    # an interleaving of its own (a cached one would not be grouped again)
    payload = b'{"ts": [1000, 1000, 1001, 1001], "sensor": ["zz-b", "zz-a", "zz-a", "zz-b"], "v": [1, 2, 3, 4]}'
    layout = decode_readings("fab/m1", payload, root="fab", now_ms=1000, limits=limits).layout
    assert len(calls) == 1
    assert layout.order.tolist() == [1, 2, 0, 3] and layout.counts.tolist() == [2, 2]
