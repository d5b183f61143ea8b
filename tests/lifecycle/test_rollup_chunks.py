"""The rollup reads the raw data of the minutes it recomputes part by part
(`rollup.read_chunks`): every touched minute in exactly one part, whole (machine, sensor)
pairs, whole machines unless one alone is over the limit, and no part over the limit unless
it is a single pair."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycle import rollup as ru

MINUTE = 60_000


def _touched(rows: list[tuple[str, str, int, int]]) -> pa.Table:
    """(machine, sensor, minute number, n) rows as `touched_counts` gives them."""
    return ru.merge_counts([pa.table({
        "machine": [r[0] for r in rows], "sensor": [r[1] for r in rows],
        "minute": pa.array([r[2] * MINUTE for r in rows], pa.timestamp("ms", tz="UTC")),
        "n": pa.array([r[3] for r in rows], pa.int64())})])


def _pairs(part: pa.Table) -> set[tuple[str, str]]:
    return set(zip(part.column("machine").to_pylist(), part.column("sensor").to_pylist(), strict=True))


def _check(touched: pa.Table, limit: int) -> list[pa.Table]:
    parts = ru.read_chunks(touched, limit)
    keys = [tuple(r.values()) for p in parts for r in p.to_pylist()]
    assert sorted(keys) == sorted(tuple(r.values()) for r in touched.select(ru.KEY).to_pylist())  # each once
    n_of = {}
    for row in touched.to_pylist():
        n_of[(row["machine"], row["sensor"])] = n_of.get((row["machine"], row["sensor"]), 0) + row["n"]
    machine_n = {}
    for (machine, _), n in n_of.items():
        machine_n[machine] = machine_n.get(machine, 0) + n
    seen: set[tuple[str, str]] = set()
    for part in parts:
        pairs = _pairs(part)
        assert not pairs & seen, "a (machine, sensor) pair is in two parts"
        seen |= pairs
        total = sum(n_of[p] for p in pairs)
        assert total <= limit or len(pairs) == 1
        machines = {m for m, _ in pairs}
        if len(machines) > 1:  # packed: whole machines only
            for machine in machines:
                assert {p for p in n_of if p[0] == machine} <= pairs
    return parts


def test_small_machines_are_packed_together_and_a_big_one_is_cut_by_sensor():
    touched = _touched([
        ("a", "t", 0, 2), ("a", "p", 0, 2), ("b", "t", 0, 3), ("b", "t", 1, 1),
        ("c", "t", 0, 5), ("c", "p", 0, 5), ("c", "r", 0, 5), ("d", "t", 0, 1)])
    parts = _check(touched, limit=10)
    assert [_pairs(p) for p in parts] == [
        {("a", "t"), ("a", "p"), ("b", "t")},  # 8 readings
        {("c", "p"), ("c", "r")}, {("c", "t")},  # c's 15 is over 10: by sensor
        {("d", "t")},  # does not join a part of a cut machine
    ]


def test_a_pair_over_the_limit_is_a_part_of_its_own():
    parts = _check(_touched([("a", "t", 0, 50), ("a", "p", 0, 1), ("b", "t", 0, 1)]), limit=10)
    assert [_pairs(p) for p in parts] == [{("a", "p")}, {("a", "t")}, {("b", "t")}]


def test_nothing_touched_is_no_part():
    assert ru.read_chunks(ru.merge_counts([]), 10) == []


@pytest.mark.parametrize("limit", [1, 7, 1000])
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from(["t", "p", "r"]), st.integers(0, 3),
                          st.integers(1, 9)), min_size=1, max_size=40))
def test_any_counts_give_disjoint_parts_within_the_limit(limit, rows):
    _check(_touched(rows), limit)


def test_counts_of_parts_of_the_same_readings_add_up():
    ts = pa.array([0, 1, MINUTE, 5], pa.timestamp("ms", tz="UTC"))
    first = ru.touched_counts(pa.table({"machine": ["a"] * 4, "sensor": ["t", "t", "t", "p"], "ts": ts}))
    again = ru.touched_counts(pa.table({"machine": ["a"], "sensor": ["t"], "ts": ts.slice(0, 1)}))
    merged = ru.sort_minutes(ru.merge_counts([first, again]))
    assert [(r["sensor"], r["n"]) for r in merged.to_pylist()] == [("p", 1), ("t", 3), ("t", 1)]
