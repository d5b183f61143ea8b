"""Byte format of the write-ahead log: framed, checksummed records. Pure, no I/O.

A record is `type (1 byte) | body length (u32) | crc32 of type+body (u32) | body`. A torn
write at the end of a segment (a crash mid-append) fails its length or checksum and ends the
replay there; such a record was never acknowledged, so the broker will deliver it again.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from core.records import AlertEvent
from ingest.codec import ContextEvent, ReadingBatch, batches_by_machine

READINGS = 1
QUARANTINE = 2
CONTEXT = 3
KEYED_READINGS = 4  # readings of many machines, with a (machine, sensor) table
ALERTS = 5  # the alert events one batch caused, written just before that batch
_KINDS = frozenset((READINGS, QUARANTINE, CONTEXT, KEYED_READINGS, ALERTS))

_HEADER = struct.Struct("<BII")
_U16 = struct.Struct("<H")
_COUNTS = struct.Struct("<II")
SEGMENT_MAGIC = b"FTWAL1\n\0"


@dataclass(slots=True, frozen=True)
class QuarantineRecord:
    received_at: int  # epoch ms
    topic: str
    reason: str
    payload: str


# zlib.crc32 lets go of the interpreter lock for a buffer over 5 KiB (CPython's zlibmodule), and
# the ingest thread then waits to take it back from the API's and the committer's threads (a
# switch interval at worst): a message of 500 readings makes a ~10 KB record, and its checksum
# took ~24 us a message in the bench's py-spy profile. Pieces of at most 5 KiB keep the lock;
# the crc32 of pieces chained is the crc32 of the whole.
_CRC_PIECE = 5 * 1024


def record_crc(body: bytes, kind: int) -> int:
    if len(body) <= _CRC_PIECE:
        return zlib.crc32(body, kind)
    view, crc = memoryview(body), kind
    for start in range(0, len(body), _CRC_PIECE):
        crc = zlib.crc32(view[start:start + _CRC_PIECE], crc)
    return crc


def _frame(kind: int, body: bytes) -> bytes:
    return _HEADER.pack(kind, len(body), record_crc(body, kind)) + body


def _pack_str(text: str) -> bytes:
    raw = text.encode()
    return _U16.pack(len(raw)) + raw


def encode_readings(batch: ReadingBatch) -> bytes:
    parts = [_COUNTS.pack(len(batch.ts), len(batch.sensor_names)), _pack_str(batch.machine), _packed_names(batch)]
    parts.append(np.ascontiguousarray(batch.sensor_codes, dtype="<u4").tobytes())
    parts.append(np.ascontiguousarray(batch.ts, dtype="<i8").tobytes())
    parts.append(np.ascontiguousarray(batch.value, dtype="<f8").tobytes())
    return _frame(READINGS, b"".join(parts))


def _packed_names(batch: ReadingBatch) -> bytes:
    """The batch's names as a record writes them; once per set of names (a decoded batch's
    layout keeps them: 100 names packed per message were 5 % of the ingest thread's samples)."""
    layout = batch.layout
    if layout is None:
        return b"".join(_pack_str(name) for name in batch.sensor_names)
    names = layout.name_set
    if names.wal_names is None:
        names.wal_names = b"".join(_pack_str(name) for name in names.names)
    return names.wal_names


def encode_keyed_readings(machines: list[str], sensors: list[str], codes: np.ndarray,
                          ts: np.ndarray, value: np.ndarray) -> bytes:
    """Readings whose row i belongs to (machines[codes[i]], sensors[codes[i]])."""
    parts = [_COUNTS.pack(len(ts), len(machines))]
    for machine, sensor in zip(machines, sensors, strict=True):
        parts.append(_pack_str(machine))
        parts.append(_pack_str(sensor))
    parts.append(np.ascontiguousarray(codes, dtype="<u4").tobytes())
    parts.append(np.ascontiguousarray(ts, dtype="<i8").tobytes())
    parts.append(np.ascontiguousarray(value, dtype="<f8").tobytes())
    return _frame(KEYED_READINGS, b"".join(parts))


def _decode_keyed_readings(body: memoryview) -> list[ReadingBatch]:
    n, n_keys = _COUNTS.unpack_from(body, 0)
    pos = _COUNTS.size
    machines, sensors = [], []
    for _ in range(n_keys):
        machine, pos = _unpack_str(body, pos)
        sensor, pos = _unpack_str(body, pos)
        machines.append(machine)
        sensors.append(sensor)
    codes = np.frombuffer(body, dtype="<u4", count=n, offset=pos)
    pos += 4 * n
    ts = np.frombuffer(body, dtype="<i8", count=n, offset=pos)
    value = np.frombuffer(body, dtype="<f8", count=n, offset=pos + 8 * n)
    # One ReadingBatch per machine, as the rest of the log's readers expect.
    return batches_by_machine(machines, sensors, codes, ts, value)


def encode_quarantine(record: QuarantineRecord) -> bytes:
    return _frame(QUARANTINE, orjson.dumps([record.received_at, record.topic, record.reason, record.payload]))


def encode_context(event: ContextEvent) -> bytes:
    fields = [event.ts, event.machine, event.event, event.lot, event.wafer, event.recipe]
    if event.recipe_version is not None:  # records without it stay as they were
        fields.append(event.recipe_version)
    return _frame(CONTEXT, orjson.dumps(fields))


def encode_alerts(events: list[AlertEvent]) -> bytes:
    return _frame(ALERTS, orjson.dumps([
        [e.seq, e.writer, e.machine, e.sensor, e.ts, e.value, e.kind, e.threshold, e.rule, e.state,
         e.raised_at, e.flapping, e.note, e.lot, e.wafer, e.recipe, e.recipe_version, e.step]
        for e in events]))


def _unpack_str(body: memoryview, pos: int) -> tuple[str, int]:
    (length,) = _U16.unpack_from(body, pos)
    pos += 2
    return bytes(body[pos:pos + length]).decode(), pos + length


def _decode_readings(body: memoryview) -> ReadingBatch:
    n, n_names = _COUNTS.unpack_from(body, 0)
    machine, pos = _unpack_str(body, _COUNTS.size)
    names = []
    for _ in range(n_names):
        name, pos = _unpack_str(body, pos)
        names.append(name)
    codes = np.frombuffer(body, dtype="<u4", count=n, offset=pos)
    pos += 4 * n
    ts = np.frombuffer(body, dtype="<i8", count=n, offset=pos)
    pos += 8 * n
    value = np.frombuffer(body, dtype="<f8", count=n, offset=pos)
    return ReadingBatch(machine=machine, sensor_names=names, sensor_codes=codes, ts=ts, value=value)


Record = ReadingBatch | QuarantineRecord | ContextEvent | AlertEvent


def _frames(view: memoryview) -> Iterator[tuple[int, memoryview, int]]:
    """(kind, body, end) of every whole record of known kind, in order; stops at the first
    that is not (torn, corrupt, or of a kind this version does not know)."""
    pos = len(SEGMENT_MAGIC) if view[:len(SEGMENT_MAGIC)] == SEGMENT_MAGIC else 0
    if pos == 0:
        return
    while pos + _HEADER.size <= len(view):
        kind, length, crc = _HEADER.unpack_from(view, pos)
        start = pos + _HEADER.size
        body = view[start:start + length]
        if len(body) != length or zlib.crc32(body, kind) != crc or kind not in _KINDS:
            return
        pos = start + length
        yield kind, body, pos


def intact_length(data: bytes) -> int:
    """The length of the prefix of a segment that replay reads: the magic and whole records."""
    end = len(SEGMENT_MAGIC) if data.startswith(SEGMENT_MAGIC) else 0
    for frame in _frames(memoryview(data)):
        end = frame[2]
    return end


def decode_records(data: bytes) -> tuple[list[Record], int]:
    """Every intact record in `data` and the length of the intact prefix."""
    records: list[Record] = []
    pos = len(SEGMENT_MAGIC) if data.startswith(SEGMENT_MAGIC) else 0
    for kind, body, end in _frames(memoryview(data)):
        pos = end
        if kind == READINGS:
            records.append(_decode_readings(body))
        elif kind == KEYED_READINGS:
            records.extend(_decode_keyed_readings(body))
        elif kind == QUARANTINE:
            records.append(QuarantineRecord(*orjson.loads(body)))
        elif kind == CONTEXT:
            records.append(ContextEvent(*orjson.loads(body)))
        else:  # ALERTS
            records.extend(AlertEvent(*fields) for fields in orjson.loads(body))
    return records, pos


def iter_readings(records: list[Record]) -> Iterator[ReadingBatch]:
    return (r for r in records if isinstance(r, ReadingBatch))
