import zlib

import numpy as np
import pytest

from ingest.codec import ContextEvent, ReadingBatch
from ingest.wal import WriteAheadLog, read_segment
from ingest.walformat import (
    QuarantineRecord,
    encode_context,
    encode_quarantine,
    encode_readings,
    record_crc,
)


def batch(n=3, machine="etch-01"):
    return ReadingBatch(machine, ["ch1/temp", "rf/power"], np.arange(n, dtype=np.uint32) % 2,
                        1_764_000_000_000 + np.arange(n, dtype=np.int64), np.linspace(0, 1, n))


def test_records_round_trip_and_tokens_come_back_after_commit(tmp_path):
    wal = WriteAheadLog(tmp_path)
    q = QuarantineRecord(1, "fab/x", "empty batch", "{}")
    c = ContextEvent(2, "etch-01", "start", "L1", "W01", "ETCH-A")
    wal.append(encode_readings(batch()), token=11)
    wal.append(encode_quarantine(q), token=12)
    wal.append(encode_context(c))
    assert wal.commit() == [11, 12]
    assert wal.commit() == []
    records = read_segment(wal.path(wal.active))
    assert records[1:] == [q, c]
    got = records[0]
    assert got.machine == "etch-01" and got.sensor_names == ["ch1/temp", "rf/power"]
    assert got.ts.tolist() == batch().ts.tolist() and got.value.tolist() == batch().value.tolist()


@pytest.mark.parametrize("most_per_call", [None, 7_001])
def test_more_records_than_one_write_call_takes_land_whole_and_in_order(tmp_path, monkeypatch, most_per_call):
    """A commit of 2,500 records (more buffers than one pwritev takes), written in full, or by a
    system that writes at most `most_per_call` bytes a call (a short write ends mid-record)."""
    import os
    if most_per_call is not None:
        real = os.pwritev
        monkeypatch.setattr(os, "pwritev", lambda fd, buffers, offset: real(fd, _first_bytes(buffers, most_per_call), offset))
    wal = WriteAheadLog(tmp_path)
    events = [ContextEvent(i, f"etch-{i % 7:02d}", "start", f"L{i}", "W01", "ETCH-A") for i in range(2_500)]
    wal.append_many([encode_context(e) for e in events], list(range(2_500)))
    assert wal.commit() == list(range(2_500))
    wal.append(encode_readings(batch(4)), token=9)
    assert wal.commit() == [9]
    records = read_segment(wal.path(wal.active))
    assert records[:-1] == events and records[-1].ts.tolist() == batch(4).ts.tolist()


def _first_bytes(buffers, limit):
    """The leading `limit` bytes of `buffers`, as buffers."""
    out = []
    for buffer in buffers:
        if limit <= 0:
            break
        out.append(bytes(buffer[:limit]))
        limit -= len(out[-1])
    return out


def test_a_torn_last_record_ends_the_replay_and_earlier_records_survive(tmp_path):
    wal = WriteAheadLog(tmp_path)
    wal.append(encode_readings(batch(5)))
    wal.append(encode_readings(batch(7)))
    wal.close()
    path = wal.path(wal.active)
    data = path.read_bytes()
    path.write_bytes(data[:-9])  # a crash in the middle of the second append
    records = read_segment(path)
    assert [len(r) for r in records] == [5]
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF  # a corrupt byte fails the checksum
    path.write_bytes(bytes(flipped))
    assert [len(r) for r in read_segment(path)] == [5]


def test_rotation_and_reopen_find_leftover_segments(tmp_path):
    wal = WriteAheadLog(tmp_path)
    wal.append(encode_readings(batch()))
    first = wal.rotate()
    wal.append(encode_readings(batch()))
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert again.leftover_segments() == [first, first + 1]
    assert again.active == first + 2
    again.delete(first)
    assert again.segments() == [first + 1, first + 2]


def test_keyed_readings_come_back_as_one_batch_per_machine(tmp_path):
    from ingest.walformat import encode_keyed_readings

    wal = WriteAheadLog(tmp_path)
    codes = np.array([0, 1, 2, 0, 2], dtype=np.uint32)
    ts = np.arange(5, dtype=np.int64) + 1_764_000_000_000
    wal.append(encode_keyed_readings(["m1", "m2", "m1"], ["a", "a", "b/c"], codes, ts, np.arange(5.0)))
    wal.close()
    batches = read_segment(wal.path(wal.active))
    rows = sorted((b.machine, b.sensor_names[c], int(t), float(v))
                  for b in batches for c, t, v in zip(b.sensor_codes, b.ts, b.value, strict=True))
    assert rows == sorted([("m1", "a", int(ts[0]), 0.0), ("m2", "a", int(ts[1]), 1.0), ("m1", "b/c", int(ts[2]), 2.0),
                           ("m1", "a", int(ts[3]), 3.0), ("m1", "b/c", int(ts[4]), 4.0)])


def test_an_empty_last_segment_is_taken_up_again_not_recovered_and_numbers_never_go_back(tmp_path):
    wal = WriteAheadLog(tmp_path)
    wal.append(encode_readings(batch()))
    first = wal.rotate()
    wal.append(b"", token=5)  # a token alone (a duplicate message) writes no record
    assert wal.active_empty
    assert wal.close() == [5]
    again = WriteAheadLog(tmp_path)
    # Nothing to recover in the empty segment, and its number is used again, never a lower one:
    # lake files are named by segment numbers.
    assert again.leftover_segments() == [first]
    assert again.active == first + 1
    again.delete(first)
    again.close()
    third = WriteAheadLog(tmp_path)
    assert third.leftover_segments() == [] and third.active == first + 1
    third.append(encode_readings(batch(4)))
    third.close()
    assert [len(r) for r in read_segment(third.path(first + 1))] == [4]


def test_a_close_keeps_an_active_segment_that_holds_records(tmp_path):
    wal = WriteAheadLog(tmp_path)
    wal.append(encode_readings(batch()))
    assert not wal.active_empty
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert again.leftover_segments() == [1] and again.active == 2


@pytest.mark.parametrize("size", [0, 1, 5 * 1024 - 1, 5 * 1024, 5 * 1024 + 1, 10 * 1024, 10 * 1024 + 7, 100_003])
def test_a_record_checksummed_in_pieces_has_the_checksum_of_the_whole(size):
    body = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    for kind in (0, 1, 7):
        assert record_crc(body, kind) == zlib.crc32(body, kind)
