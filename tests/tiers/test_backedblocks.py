"""The blocks appending merges the unsealed rows into are memory a thread of their own backed
ahead (tiers.backedblocks): the same rows, in the same order, as merged without it."""

import ctypes
import gc
import mmap
import random
import time

import numpy as np
import pyarrow as pa
import pytest

from tests.tiers.test_unsealed_view import _append, _expected, _merging_every, _rows
from tiers import prefault
from tiers import unsealed as unsealed_module
from tiers.backedblocks import BackedBlocks
from tiers.keys import SensorKeys
from tiers.unsealed import UnsealedData

populate = prefault.loaded()
pytestmark = pytest.mark.skipif(populate is None, reason="no madvise(MADV_POPULATE_WRITE) here")
_libc = ctypes.CDLL(None, use_errno=True)


class _Owner:
    pass


def _resident_pages(buffer: memoryview, begin: int, end: int) -> list[bool]:
    """Whether each page of bytes `begin:end` of `buffer` (page-aligned) is backed (mincore)."""
    page = mmap.PAGESIZE
    address = np.frombuffer(buffer, np.uint8).ctypes.data + begin
    assert address % page == 0
    count = (end - begin) // page
    vector = (ctypes.c_ubyte * count)()
    assert _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(count * page), vector) == 0, ctypes.get_errno()
    return [bool(v & 1) for v in vector]


def _in_block(array: np.ndarray) -> bool:
    """Whether the array's memory is a block's: its bases (arrays, views) lead to a mapping."""
    base = array.base
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.obj if isinstance(base, memoryview) else base.base
    return isinstance(base, mmap.mmap)


def test_a_block_is_handed_out_with_its_first_bytes_backed_and_the_rest_not():
    page = mmap.PAGESIZE
    owner = _Owner()
    blocks = BackedBlocks(owner, populate, size=64 * page, backed=16 * page, ready=2)
    assert blocks.wait_ready()
    buffer = blocks.take(40 * page)
    assert buffer is not None and len(buffer) == 40 * page and blocks.failed == 0
    assert all(_resident_pages(buffer, 0, 16 * page))  # backed ahead
    assert not any(_resident_pages(buffer, 16 * page, 40 * page))  # beyond `backed`: on first write, as before
    buffer[20 * page] = 7  # writable
    assert blocks.take(65 * page) is None and blocks.missed == 1  # over `size`: the caller allocates


def _address(buffer: memoryview) -> int:
    return np.frombuffer(buffer, np.uint8).ctypes.data


def test_a_block_nothing_reads_any_more_is_handed_out_again_still_backed():
    page = mmap.PAGESIZE
    owner = _Owner()
    blocks = BackedBlocks(owner, populate, size=8 * page, backed=4 * page, ready=1, keep=2)
    assert blocks.wait_ready()
    first = blocks.take(6 * page)
    assert first is not None
    address = _address(first)
    column = np.frombuffer(first, np.int64, count=page // 8, offset=page)  # as a merge's column
    column[:] = 5
    del first
    gc.collect()
    assert blocks.reused == 0  # the column still reads it
    assert column.sum() == 5 * (page // 8)
    del column
    gc.collect()
    assert blocks.reused == 1
    while (again := blocks.take(6 * page)) is not None and _address(again) != address:
        pass  # blocks made meanwhile come first
    assert again is not None and all(_resident_pages(again, 0, 4 * page))  # the pages it backed, as they were


def test_no_more_than_keep_freed_blocks_wait():
    page = mmap.PAGESIZE
    owner = _Owner()
    blocks = BackedBlocks(owner, populate, size=2 * page, backed=page, ready=1, keep=3)
    taken = []
    for _ in range(6):
        assert blocks.wait_ready()
        taken.append(blocks.take(page))
    del taken
    gc.collect()
    assert blocks.reused <= 3 and len(blocks._ready) <= 3


def test_the_thread_ends_once_its_owner_is_gone(monkeypatch):
    from tiers import backedblocks
    monkeypatch.setattr(backedblocks, "_IDLE_CHECK_S", 0.05)
    owner = _Owner()
    blocks = BackedBlocks(owner, populate, size=4 * mmap.PAGESIZE, backed=mmap.PAGESIZE, ready=1)
    assert blocks.wait_ready()
    del owner
    gc.collect()
    blocks._thread.join(timeout=5)
    assert not blocks._thread.is_alive()


@pytest.mark.parametrize("merge_rows", [1 << 17, 50])  # 50: appending merges many blocks
def test_rows_merged_into_backed_blocks_are_those_appended_in_their_order(monkeypatch, merge_rows):
    monkeypatch.setattr(unsealed_module, "_MERGE_ROWS", merge_rows)
    for seed in range(4):
        merged = []
        for loop in (populate, None):
            monkeypatch.setattr(unsealed_module, "_populate", loop)
            rng = random.Random(seed)
            keys = SensorKeys()
            unsealed = UnsealedData(keys)
            rows: list = []
            for _ in range(80):
                if unsealed._blocks is not None:
                    assert unsealed._blocks.wait_ready()  # so that every merge after the first finds one
                _append(unsealed, keys, rng, 1, rows)
            part = unsealed._segments[1]
            merged.append([np.concatenate(getattr(part, name)).tolist() for name in unsealed_module._CHUNK_COLUMNS])
            view = unsealed.tables([1])
            assert _rows(view.fresh) == _expected(rows, True) and _rows(view.late) == _expected(rows, False)
            if loop is not None and merge_rows == 50:
                assert unsealed._blocks is not None and unsealed._blocks.taken > 5
                for name in unsealed_module._CHUNK_COLUMNS:  # a block's columns: read-only views of its memory
                    in_blocks = [a for a in getattr(part, name) if _in_block(a)]
                    assert len(in_blocks) == unsealed._blocks.taken and not any(a.flags.writeable for a in in_blocks)
        assert merged[0] == merged[1], seed


def test_a_merge_that_finds_no_block_ready_allocates_as_before(monkeypatch):
    monkeypatch.setattr(unsealed_module, "_MERGE_ROWS", 50)
    monkeypatch.setattr(unsealed_module, "_populate", lambda *args: time.sleep(60) or 0)  # never ready in time
    keys = SensorKeys()
    unsealed = UnsealedData(keys)
    rows: list = []
    rng = random.Random(9)
    for _ in range(40):
        _append(unsealed, keys, rng, 1, rows)
    assert unsealed._blocks is not None and unsealed._blocks.taken == 0 and unsealed._blocks.missed > 0
    view = unsealed.tables([1])
    assert _rows(view.fresh) == _expected(rows, True) and _rows(view.late) == _expected(rows, False)


def _address_of(column: pa.Array) -> int:
    return column.buffers()[1].address


def _codes_in_block(batch: pa.RecordBatch, key_ids: np.ndarray) -> list[bool]:
    """Whether the batch's machine and sensor codes lie in the block whose first column is
    `key_ids` (a block's first column starts it)."""
    begin = key_ids.ctypes.data
    return [begin < _address_of(batch.column(name).indices) < begin + unsealed_module._BLOCK_BYTES
            for name in ("machine", "sensor")]


def _merging_into_blocks(monkeypatch, seed: int) -> tuple[random.Random, SensorKeys, UnsealedData, list]:
    """An empty buffer whose appending merges blocks of 50 rows into backed blocks."""
    monkeypatch.setattr(unsealed_module, "_populate", populate)
    return _merging_every(monkeypatch, 50, seed)


def test_once_sql_reads_the_rows_a_merged_blocks_view_keeps_its_codes_in_the_block(monkeypatch):
    rng, keys, unsealed, rows = _merging_into_blocks(monkeypatch, 3)
    _append(unsealed, keys, rng, 1, rows, mode="fresh")
    unsealed.tables([1])  # a statement read the rows: appending views each block it merges from now on
    for _ in range(60):
        if unsealed._blocks is not None:
            assert unsealed._blocks.wait_ready()
        _append(unsealed, keys, rng, 1, rows, mode="fresh")  # a block of fresh and late rows is split: copied
    part = unsealed._segments[1]
    in_blocks = [(id(ts), key_ids) for ts, key_ids in zip(part.ts, part.key_ids, strict=True) if _in_block(ts)]
    assert unsealed._blocks is not None and len(in_blocks) >= 5
    for ts_id, key_ids in in_blocks:
        view = part.prepared.get(ts_id)
        if view is None:  # the block the first statement merged and viewed itself
            continue
        batch = view.fresh
        assert view.late is None and batch.num_rows == len(key_ids)
        assert _codes_in_block(batch, key_ids) == [True, True]
    table = unsealed.tables([1])
    assert _rows(table.fresh) == _expected(rows, True) and _rows(table.late) == _expected(rows, False)
    reused = unsealed._blocks.reused
    unsealed.drop(1)
    del table, part, in_blocks, view, batch
    gc.collect()
    assert unsealed._blocks.reused > reused  # nothing reads the blocks now: handed out again


def _tail_of(unsealed: UnsealedData, keys: SensorKeys, rng: random.Random, rows: list, smallest: int,
             below: int) -> int:
    """Appends until the segment's tail (the chunks after its last merged block) is two chunks
    or more of `smallest` to `below` rows; the blocks taken by then, with one ready."""
    part = unsealed._segments[1]
    while True:
        _append(unsealed, keys, rng, 1, rows, mode="fresh")
        if len(part.ts) - part.merged >= 2 and smallest <= part.unmerged < below:
            assert unsealed._blocks.wait_ready()
            return unsealed._blocks.taken


@pytest.mark.parametrize("large", [True, False])
def test_a_statement_merges_a_large_tail_into_a_block_with_its_views_codes(monkeypatch, large):
    rng, keys, unsealed, rows = _merging_into_blocks(monkeypatch, 4)
    while unsealed._blocks is None:  # appending merged a block: the blocks exist
        _append(unsealed, keys, rng, 1, rows, mode="fresh")
    unsealed.tables([1])
    threshold = 50 // unsealed_module._TAIL_IN_BLOCK
    taken = _tail_of(unsealed, keys, rng, rows, threshold if large else 1, 50 if large else threshold)
    table = unsealed.tables([1])
    part = unsealed._segments[1]
    assert unsealed._blocks.taken == taken + large and _in_block(part.ts[-1]) == large
    batch = part.fresh_batches[-1]
    assert batch.num_rows == len(part.ts[-1])
    assert _codes_in_block(batch, part.key_ids[-1]) == [large, large]
    assert _rows(table.fresh) == _expected(rows, True) and table.late.num_rows == 0
