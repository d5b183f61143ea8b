"""SQL's view of the unsealed rows: every row once, fresh and late apart, and built once.

Each query used to copy every unsealed row and name (tens of millions at full rate, in the
ingesting process); the view now extends itself by what was appended since the last query."""

import random
import sys
import threading
import time

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from tiers import unsealed as unsealed_module
from tiers.keys import SensorKeys
from tiers.unsealed import UnsealedData


def _append(unsealed: UnsealedData, keys: SensorKeys, rng: random.Random, segment: int, rows: list,
            mode: str | None = None) -> None:
    """One chunk of random rows, some fresh and some late, of machines and sensors that
    appear over time (so the name dictionaries grow between queries)."""
    n = rng.randint(1, 40)
    machine_count = 1 + len(rows) // 50
    names = [(f"m{rng.randrange(machine_count)}", f"s{rng.randrange(7)}") for _ in range(n)]
    key_ids = np.array([keys.id_of(m, s) for m, s in names], dtype=np.int32)
    ts = np.array([rng.randrange(1_000_000) for _ in range(n)], dtype=np.int64)
    value = np.array([rng.random() for _ in range(n)])
    mode = mode or rng.choice(["fresh", "late", "mixed"])
    verified = np.array([mode == "fresh" or (mode == "mixed" and rng.random() < 0.5) for _ in range(n)])
    unsealed.add_readings(segment, key_ids, ts, value, verified)
    rows += [(m, s, int(t), float(v), bool(f)) for (m, s), t, v, f in zip(names, ts, value, verified, strict=True)]


def _sql(statement: str, **tables: pa.Table) -> list[tuple]:
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(name, table)
    return [tuple(r) for r in con.execute(statement).fetchall()]


def _rows(table: pa.Table) -> list[tuple]:
    return _sql("SELECT machine, sensor, epoch_ms(ts::TIMESTAMP), value FROM t ORDER BY ALL", t=table)


def _expected(rows: list, fresh: bool) -> list[tuple]:
    return sorted((m, s, t, v) for m, s, t, v, f in rows if f == fresh)


@pytest.mark.parametrize("merge_rows", [1 << 17, 50])  # 50: appending merges blocks between the queries
def test_the_view_holds_every_appended_row_once_between_any_appends(monkeypatch, merge_rows):
    monkeypatch.setattr(unsealed_module, "_MERGE_ROWS", merge_rows)
    for seed in range(8):
        rng = random.Random(seed)
        keys = SensorKeys()
        unsealed = UnsealedData(keys)
        rows: dict[int, list] = {1: [], 2: []}
        for _ in range(60):
            segment = rng.choice([1, 2])
            _append(unsealed, keys, rng, segment, rows[segment])
            if rng.random() < 0.3:
                chosen = sorted(rng.sample([1, 2], rng.randint(1, 2)))
                both = [r for s in chosen for r in rows[s]]
                view = unsealed.tables(chosen)
                assert _rows(view.fresh) == _expected(both, True), seed
                assert _rows(view.late) == _expected(both, False), seed
        assert unsealed.rows == len(rows[1]) + len(rows[2])


def test_a_seal_reads_the_same_rows_before_and_after_sql_viewed_the_segment():
    rng = random.Random(3)
    keys = SensorKeys()
    unsealed = UnsealedData(keys)
    rows: list = []
    for _ in range(30):
        _append(unsealed, keys, rng, 1, rows)
    before = unsealed.sealable([1]).fresh
    bytes_before = unsealed.bytes
    unsealed.tables([1])  # merges the segment's 30 chunks into one
    after = unsealed.sealable([1]).fresh
    assert after.equals(before)
    assert unsealed.bytes < bytes_before  # 29 chunks' bookkeeping fewer: the rows are the same


def _buffer_addresses(table: pa.Table) -> list[int]:
    return [chunk.buffers()[1].address for chunk in table.column("value").chunks]


def test_a_query_builds_only_what_was_appended_since_the_last_and_copies_no_row():
    rng = random.Random(5)
    keys = SensorKeys()
    unsealed = UnsealedData(keys)
    rows: list = []
    for _ in range(5):
        _append(unsealed, keys, rng, 1, [], mode="fresh")  # on time: nothing to split
    first = unsealed.tables([1])
    # No copy: the view's buffers are the segment's own arrays.
    owned = {a.ctypes.data for a in unsealed._segments[1].value}
    assert first.late.num_rows == 0 and set(_buffer_addresses(first.fresh)) == owned
    again = unsealed.tables([1])
    assert _buffer_addresses(again.fresh) == _buffer_addresses(first.fresh)
    assert _buffer_addresses(again.late) == _buffer_addresses(first.late)
    for _ in range(3):
        _append(unsealed, keys, rng, 1, rows)
    grown = unsealed.tables([1])
    # The rows viewed before keep their batches; the new chunks became one more batch.
    for old, new in ((first.fresh, grown.fresh), (first.late, grown.late)):
        assert _buffer_addresses(new)[:len(_buffer_addresses(old))] == _buffer_addresses(old)
    assert grown.fresh.num_rows + grown.late.num_rows == unsealed.rows


def test_sql_groups_names_right_across_batches_whose_dictionaries_grew():
    keys = SensorKeys()
    unsealed = UnsealedData(keys)
    counts: dict[str, int] = {}
    for step in range(6):
        machine = f"tool{step % 4}"
        key_ids = np.array([keys.id_of(machine, f"s{i}") for i in range(step + 1)], dtype=np.int32)
        unsealed.add_readings(1, key_ids, np.arange(len(key_ids), dtype=np.int64) + 100 * step,
                              np.ones(len(key_ids)), np.ones(len(key_ids), dtype=bool))
        counts[machine] = counts.get(machine, 0) + len(key_ids)
        unsealed.tables([1])  # a batch per step, each with the dictionary of its time
    fresh = unsealed.tables([1]).fresh
    assert fresh.column("machine").num_chunks == 6
    found = dict(_sql("SELECT machine, count(*) FROM t GROUP BY machine", t=fresh))
    assert found == counts
    assert _sql("SELECT count(*) FROM t WHERE machine = 'tool1' AND sensor = 's1'", t=fresh) == [(2,)]


def _merging_every(monkeypatch, merge_rows: int, seed: int) -> tuple[random.Random, SensorKeys, UnsealedData, list]:
    """An empty buffer whose appending merges blocks of `merge_rows`, and what `_append` needs."""
    monkeypatch.setattr(unsealed_module, "_MERGE_ROWS", merge_rows)
    keys = SensorKeys()
    return random.Random(seed), keys, UnsealedData(keys), []


def test_appending_merges_blocks_so_a_query_after_a_pause_merges_few(monkeypatch):
    rng, keys, unsealed, rows = _merging_every(monkeypatch, 100, seed=9)
    for _ in range(3):
        _append(unsealed, keys, rng, 1, rows, mode="fresh")
    unsealed.tables([1])  # views the first chunks (merged into one)
    segment = unsealed._segments[1]
    for _ in range(25):  # ~500 rows: blocks of 100 or more merged as they come
        _append(unsealed, keys, rng, 1, rows, mode="fresh")
    blocks = segment.merged - 1
    assert blocks >= 3 and all(len(a) >= 100 for a in segment.ts[1:segment.merged])
    assert segment.unmerged == sum(len(a) for a in segment.ts[segment.merged:]) < 100
    tail = len(segment.ts) - segment.merged
    sealed_before = unsealed.sealable([1]).fresh
    view = unsealed.tables([1])
    assert len(segment.ts) == 1 + blocks + (1 if tail else 0)  # only the tail was merged here
    assert view.fresh.num_rows == len(rows) and _rows(view.fresh) == _expected(rows, True)
    assert len(view.fresh.to_batches()) == len(segment.ts)  # a batch a block, not a batch a chunk
    assert unsealed.sealable([1]).fresh.equals(sealed_before)


@pytest.mark.parametrize("merge_rows", [1 << 17, 50])
def test_time_bounds_leave_out_only_batches_without_a_row_within_them(monkeypatch, merge_rows):
    """As the lake's files are pruned by a statement's time bounds: every row within the bounds
    is still there, and a batch all of whose rows are outside is not."""
    monkeypatch.setattr(unsealed_module, "_MERGE_ROWS", merge_rows)
    for seed in range(6):
        rng = random.Random(seed)
        keys = SensorKeys()
        unsealed = UnsealedData(keys)
        rows: list = []
        for step in range(40):
            # Time moves on: each chunk's readings are a second later than the last's, a few
            # of them late by up to 3 s.
            n = rng.randint(1, 30)
            names = [(f"m{rng.randrange(5)}", f"s{rng.randrange(4)}") for _ in range(n)]
            ts = [1000 * step + rng.randrange(1000) - (rng.randrange(3000) if rng.random() < 0.1 else 0)
                  for _ in range(n)]
            verified = [rng.random() < 0.8 for _ in range(n)]
            unsealed.add_readings(1, np.array([keys.id_of(m, s) for m, s in names], np.int32),
                                  np.array(ts, np.int64), np.arange(n, dtype=np.float64), np.array(verified))
            rows += [(m, s, t, float(v), f) for (m, s), t, v, f in zip(names, ts, range(n), verified, strict=True)]
            if rng.random() < 0.3:
                unsealed.tables([1])  # the view grows a batch at a time
        for lo, hi in ((None, None), (20_000, None), (None, 5_500), (12_300, 12_400), (1, 0)):
            view = unsealed.tables([1], ts_bounds=(lo, hi))

            def within(found: list[tuple], lo=lo, hi=hi) -> list[tuple]:
                return [r for r in found if (lo is None or r[2] >= lo) and (hi is None or r[2] <= hi)]

            assert within(_rows(view.fresh)) == within(_expected(rows, True)), seed
            assert within(_rows(view.late)) == within(_expected(rows, False)), seed
            for table in (view.fresh, view.late):
                for batch in table.to_batches():
                    ts_of_batch = batch.column("ts").cast(pa.int64()).to_numpy()
                    assert (lo is None or ts_of_batch.max() >= lo) and (hi is None or ts_of_batch.min() <= hi), seed
            if (lo, hi) == (12_300, 12_400):
                assert view.fresh.num_rows < len(_expected(rows, True)), seed  # something was left out
        assert unsealed.tables([1], ts_bounds=(1, 0)).fresh.num_rows == 0


@pytest.mark.parametrize("merge_rows", [1 << 17, 40])
def test_views_built_without_the_ingest_lock_hold_a_prefix_of_what_was_appended(monkeypatch, merge_rows):
    """The ingest thread appends (and merges blocks) under its lock while statements build
    their views without it, merging the tail of chunks in the chunks' place: every view holds
    exactly the first k chunks for some k, and the segment keeps every row once."""
    monkeypatch.setattr(unsealed_module, "_MERGE_ROWS", merge_rows)
    keys = SensorKeys()
    unsealed = UnsealedData(keys)
    ingest_lock = threading.Lock()
    ids = np.array([keys.id_of(f"m{i % 5}", f"s{i % 3}") for i in range(15)], np.int32)
    sizes = [1 + (n * 7) % 13 for n in range(1500)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    done = threading.Event()

    def ingest() -> None:
        for n, size in enumerate(sizes):
            ts = np.arange(starts[n], starts[n] + size, dtype=np.int64)
            with ingest_lock:
                unsealed.add_readings(1, ids[ts % 15], ts, ts.astype(np.float64), (ts % 11) != 0)
            time.sleep(0)  # between micro-batches
        done.set()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the interpreter over often: the threads interleave finely
    thread = threading.Thread(target=ingest)
    thread.start()
    seen, views = 0, 0
    while True:
        finished = done.is_set()
        view = unsealed.tables([1], lock=ingest_lock)
        ts = np.sort(np.concatenate([view.fresh.column("ts").cast(pa.int64()).to_numpy(),
                                     view.late.column("ts").cast(pa.int64()).to_numpy()]))
        assert len(ts) in set(starts.tolist()) and len(ts) >= seen  # whole chunks, never fewer
        assert np.array_equal(ts, np.arange(len(ts)))  # the first k chunks, each row once
        late = view.late.column("ts").cast(pa.int64()).to_numpy()
        assert np.all(late % 11 == 0)
        seen, views = len(ts), views + 1
        if finished:
            break
    thread.join()
    sys.setswitchinterval(switch)
    assert seen == starts[-1] and views > 10
    sealed = unsealed.sealable([1]).fresh.column("ts").cast(pa.int64()).to_numpy()
    assert np.array_equal(np.sort(sealed), np.arange(starts[-1]))
    part = unsealed._segments[1]
    # The chunks counted are the chunks held, and the views' bytes those of the segment's views,
    # made here or by the appending thread: every row's codes, or a copy where a block was split.
    assert unsealed.bytes == unsealed_module.BYTES_PER_READING * starts[-1] + \
        unsealed_module.BYTES_PER_CHUNK * len(part.ts) + part.view_bytes
    assert unsealed_module.BYTES_PER_VIEWED_READING * starts[-1] <= part.view_bytes \
        <= unsealed_module.BYTES_PER_SPLIT_READING * starts[-1]
    unsealed.drop(1)
    assert unsealed.bytes == 0


def test_once_sql_reads_the_rows_appending_views_each_block_it_merges_and_a_query_only_adds_it(monkeypatch):
    rng, keys, unsealed, rows = _merging_every(monkeypatch, 50, seed=11)
    while len(rows) < 200:
        _append(unsealed, keys, rng, 1, rows)
    part = unsealed._segments[1]
    assert part.prepared == {} and unsealed.bytes == unsealed_module.BYTES_PER_READING * len(rows) + \
        unsealed_module.BYTES_PER_CHUNK * len(part.ts)  # no statement yet: appending made no view
    unsealed.tables([1])
    viewed = len(part.ts)
    for _ in range(20):  # ~10 blocks merged by appending, after the statement
        _append(unsealed, keys, rng, 1, rows)
    blocks = part.ts[viewed:part.merged]
    assert len(blocks) >= 2 and {id(b) for b in blocks} == set(part.prepared)
    prepared = [v for v in part.prepared.values()]
    view = unsealed.tables([1])
    assert part.prepared == {}
    kept = {id(b) for b in part.fresh_batches + part.late_batches}
    assert all(id(b) in kept for v in prepared for b in (v.fresh, v.late) if b is not None)  # added, not made again
    assert _rows(view.fresh) == _expected(rows, True) and _rows(view.late) == _expected(rows, False)
    assert unsealed.bytes == unsealed_module.BYTES_PER_READING * len(rows) + \
        unsealed_module.BYTES_PER_CHUNK * len(part.ts) + part.view_bytes
    assert unsealed_module.BYTES_PER_VIEWED_READING * len(rows) <= part.view_bytes
    unsealed.drop(1)
    assert unsealed.bytes == 0
