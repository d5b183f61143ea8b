"""The columns of SQL's view of a block of unsealed rows (tiers.viewcolumns): the compiled call
and numpy give the same codes, count and spans, for blocks all verified, none, mixed or empty;
and the view is built with the compiled call once it is warmed."""

from __future__ import annotations

import numpy as np
import pytest

from tiers import viewcolumns


def _block(rng, rows: int, verified: str, negative: bool = False):
    keys = 50
    machine_codes = rng.integers(0, 7, keys).astype(np.int32)
    sensor_codes = rng.integers(0, 11, keys).astype(np.int32)
    key_ids = rng.integers(0, keys, rows).astype(np.int32)
    ts = (rng.integers(-10**12, -2, rows) if negative else rng.integers(0, 10**12, rows)).astype(np.int64)
    flags = {"all": np.ones(rows, bool), "none": np.zeros(rows, bool),
             "mixed": rng.random(rows) < 0.5}[verified]
    return key_ids, machine_codes, sensor_codes, ts, flags


@pytest.mark.parametrize("rows", [0, 1, 2, 1000])
@pytest.mark.parametrize("verified", ["all", "none", "mixed"])
@pytest.mark.parametrize("negative", [False, True])  # ts before 1970: below the (0, -1) of no rows
def test_compiled_and_numpy_agree(rows, verified, negative):
    rng = np.random.default_rng(rows)
    block = _block(rng, rows, verified, negative)
    viewcolumns.warm()
    compiled = viewcolumns.block_columns(*block)
    numpy = viewcolumns._with_numpy(*block, np.empty(rows, np.int32), np.empty(rows, np.int32))
    key_ids, machine_codes, sensor_codes, ts, flags = block
    assert compiled[0].tolist() == numpy[0].tolist() == machine_codes[key_ids].tolist()
    assert compiled[1].tolist() == numpy[1].tolist() == sensor_codes[key_ids].tolist()
    assert compiled[0].dtype == numpy[0].dtype == np.int32
    assert compiled[2:] == numpy[2:]
    assert compiled[2] == int(flags.sum())
    fresh, late = ts[flags], ts[~flags]
    assert compiled[3] == ((int(fresh.min()), int(fresh.max())) if len(fresh) else (0, -1))
    assert compiled[4] == ((int(late.min()), int(late.max())) if len(late) else (0, -1))


@pytest.mark.parametrize("compiled", [True, False])
def test_codes_go_into_the_arrays_given(monkeypatch, compiled):
    rng = np.random.default_rng(5)
    block = _block(rng, 300, "mixed")
    viewcolumns.warm()
    if not compiled:
        monkeypatch.setattr(viewcolumns, "_compiled", None)
    room = np.full(600, -1, np.int32)  # as a merged block's spare room: both columns in one buffer
    machines, sensors, *_ = viewcolumns.block_columns(*block, out=(room[:300], room[300:]))
    key_ids, machine_codes, sensor_codes = block[:3]
    assert np.shares_memory(machines, room) and np.shares_memory(sensors, room)
    assert room[:300].tolist() == machine_codes[key_ids].tolist()
    assert room[300:].tolist() == sensor_codes[key_ids].tolist()


def test_the_view_is_built_with_the_compiled_call_once_warmed(monkeypatch):
    from tiers.keys import SensorKeys
    from tiers.unsealed import UnsealedData

    viewcolumns.warm()
    calls = []
    kernel = viewcolumns._compiled
    monkeypatch.setattr(viewcolumns, "_compiled", lambda *a: calls.append(a) or kernel(*a))
    keys = SensorKeys()
    ids = np.array([keys.id_of("m", "a"), keys.id_of("m", "b")], dtype=np.int32)
    unsealed = UnsealedData(keys)
    unsealed.add_readings(1, ids, np.array([5, 7], np.int64), np.array([1.0, 2.0]), np.array([True, False]))
    tables = unsealed.tables([1])
    assert len(calls) == 1
    assert tables.fresh.to_pylist()[0]["sensor"] == "a" and tables.late.to_pylist()[0]["sensor"] == "b"
