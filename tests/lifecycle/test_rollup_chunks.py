"""How the rollup reads the minutes it recomputes. Each file's batches become partial
aggregates (`rollup.partial_minutes`), merged exactly unless two runs of a minute overlap in
time (`rollup.merge_partials`); those minutes are read again part by part
(`rollup.read_chunks`): every minute in exactly one part, whole (machine, sensor) pairs, whole
machines unless one alone is over the limit, no part over the limit unless a single pair."""

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


# ---- partial aggregates of runs (a lake file's batches), merged --------------------------------
def _run(rows: list[tuple[str, str, int, float]]) -> pa.Table:
    """A run as a lake file holds it: sorted by (machine, sensor, ts), no key twice."""
    unique = sorted({(m, s, t): v for m, s, t, v in rows}.items())
    return pa.table({"machine": [k[0] for k, _ in unique], "sensor": [k[1] for k, _ in unique],
                     "ts": pa.array([k[2] for k, _ in unique], pa.timestamp("ms", tz="UTC")),
                     "value": pa.array([v for _, v in unique], pa.float64())})


readings = st.tuples(st.sampled_from("ab"), st.sampled_from(["t", "p"]), st.integers(0, 3 * MINUTE),
                     st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@given(st.lists(st.lists(readings, min_size=1, max_size=30), min_size=1, max_size=5))
def test_merged_runs_are_the_minutes_of_all_their_rows_unless_runs_overlap(runs_rows):
    runs = [_run(rows) for rows in runs_rows]
    merged, overlapping = ru.merge_partials([ru.partial_minutes(r) for r in runs])
    everything = pa.concat_tables(runs)
    direct = {(r["machine"], r["sensor"], r["minute"]): r for r in ru.aggregate_minutes(everything).to_pylist()}
    flagged = {(r["machine"], r["sensor"], r["minute"]) for r in overlapping.to_pylist()}
    spans: dict = {}
    for i, run in enumerate(runs):
        for row in ru.partial_minutes(run).to_pylist():
            spans.setdefault((row["machine"], row["sensor"], row["minute"]), []).append((row["ts_min"], row["ts_max"], i))
    for key, found in spans.items():
        found.sort()
        overlaps = any(b[0] <= a[1] for a, b in zip(found, found[1:], strict=False))
        assert (key in flagged) == overlaps, key  # flagged exactly when two runs overlap in time
    merged_keys = {(r["machine"], r["sensor"], r["minute"]) for r in merged.to_pylist()}
    assert merged_keys | flagged == set(direct) and not merged_keys & flagged
    for row in merged.to_pylist():
        want = direct[(row["machine"], row["sensor"], row["minute"])]
        assert (row["n"], row["min"], row["max"], row["first"], row["last"]) == \
            (want["n"], want["min"], want["max"], want["first"], want["last"])
        assert row["avg"] == pytest.approx(want["avg"], rel=1e-12, abs=1e-9)
    rows_of: dict = {}
    for run in runs:
        for row in ru.partial_minutes(run).to_pylist():
            key = (row["machine"], row["sensor"], row["minute"])
            rows_of[key] = rows_of.get(key, 0) + row["n"]
    for row in overlapping.to_pylist():  # n: the rows the runs hold (repeats counted), what a re-read reads
        assert row["n"] == rows_of[(row["machine"], row["sensor"], row["minute"])]


def test_a_reading_in_two_runs_flags_its_minute():
    first = _run([("a", "t", 1_000, 1.0), ("a", "t", 2_000, 2.0)])
    again = _run([("a", "t", 2_000, 9.0), ("a", "t", 3_000, 3.0), ("b", "t", 3_000, 3.0)])
    merged, overlapping = ru.merge_partials([ru.partial_minutes(first), ru.partial_minutes(again)])
    assert [(r["machine"], r["n"]) for r in overlapping.to_pylist()] == [("a", 4)]
    assert [(r["machine"], r["n"], r["first"]) for r in merged.to_pylist()] == [("b", 1, 3.0)]
