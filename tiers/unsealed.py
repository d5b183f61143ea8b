"""What is durable in the log but not sealed into Parquet yet, kept in memory per log segment.

This is the hot tier's face in SQL: `readings` is the cold lake plus these rows. Rows are
*fresh* (the hot ring vouched they are no duplicates) or *late* (older than the ring covers;
the query checks them against the cold lake). The pipeline's (ingest) lock guards it; SQL's
views are built under `view_lock` and take the ingest lock only for moments (`tables`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.records import AlertEvent
from ingest.codec import ContextEvent, ReadingBatch
from ingest.walformat import QuarantineRecord
from tiers import prefault
from tiers.backedblocks import BackedBlocks
from tiers.keys import SensorKeys
from tiers.timespan import span_may_hold
from tiers.viewcolumns import block_columns

READINGS_SCHEMA = pa.schema([
    ("machine", pa.string()),
    ("sensor", pa.string()),
    ("ts", pa.timestamp("ms", tz="UTC")),
    ("value", pa.float64()),
])
# The same rows as the sealer builds them: names as dictionaries (codes into the distinct
# names), which Parquet stores as plain strings.
_NAMES = pa.dictionary(pa.int32(), pa.string())
SEALING_SCHEMA = pa.schema([("machine", _NAMES), ("sensor", _NAMES), READINGS_SCHEMA.field("ts"),
                            READINGS_SCHEMA.field("value")])
# And as SQL reads them (`UnsealedData.tables`): ts as UTC milliseconds without a time zone,
# which DuckDB widens to the views' TIMESTAMP with a multiplication. Given a time zone, DuckDB
# casts each value to TIMESTAMP through ICU: ~37 ns a row, 0.4 s for any statement that reads
# the ts of 10 M unsealed rows (`max(ts)`, a time filter), against 16 ms. `value` comes first:
# a statement that needs no column (`count(*)`) scans the first, and a float64 is read as it
# is, where the dictionary-coded names cost a lookup a row (`count(*)` of 10 M: 2.4 ms, not 5).
SQL_SCHEMA = pa.schema([READINGS_SCHEMA.field("value"), ("ts", pa.timestamp("ms")), ("machine", _NAMES),
                        ("sensor", _NAMES)])
QUARANTINE_SCHEMA = pa.schema([
    ("received_at", pa.timestamp("ms", tz="UTC")),
    ("topic", pa.string()),
    ("reason", pa.string()),
    ("payload", pa.string()),
])
CONTEXT_SCHEMA = pa.schema([
    ("ts", pa.timestamp("ms", tz="UTC")),
    ("machine", pa.string()),
    ("event", pa.string()),
    ("lot", pa.string()),
    ("wafer", pa.string()),
    ("recipe", pa.string()),
    ("recipe_version", pa.string()),
])
ALERTS_SCHEMA = pa.schema([
    ("seq", pa.int64()),
    ("writer", pa.string()),
    ("machine", pa.string()),
    ("sensor", pa.string()),
    ("ts", pa.timestamp("ms", tz="UTC")),
    ("value", pa.float64()),
    ("kind", pa.string()),
    ("threshold", pa.float64()),
    ("rule", pa.string()),
    ("state", pa.string()),
    ("raised_at", pa.timestamp("ms", tz="UTC")),
    ("flapping", pa.bool_()),
    ("note", pa.string()),
    ("lot", pa.string()),
    ("wafer", pa.string()),
    ("recipe", pa.string()),
    ("recipe_version", pa.string()),
    ("step", pa.string()),
])


@dataclass
class _Segment:
    key_ids: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)
    verified: list[np.ndarray] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    context: list[ContextEvent] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    rows: int = 0
    # SQL's view of the first `viewed` chunks (see UnsealedData.tables): built once, shared.
    viewed: int = 0
    # Chunks before this one are merged blocks (`_MERGE_ROWS` rows each, or what a query
    # found); `unmerged` rows follow, so a query never merges more than `_MERGE_ROWS`.
    merged: int = 0
    unmerged: int = 0
    fresh_batches: list[pa.RecordBatch] = field(default_factory=list)
    late_batches: list[pa.RecordBatch] = field(default_factory=list)
    # Each batch's first and last ts (epoch ms), by which a statement's time bounds prune it.
    fresh_spans: list[tuple[int, int]] = field(default_factory=list)
    late_spans: list[tuple[int, int]] = field(default_factory=list)
    # Views of merged blocks that appending made as it merged them (`UnsealedData.add_readings`),
    # by the id of the block's ts array, until a statement adds them to the view.
    prepared: dict[int, _ChunkView] = field(default_factory=dict)
    # Memory of the views (prepared or added): the name codes, and the rows a split block copied.
    view_bytes: int = 0


@dataclass(frozen=True)
class _ChunkView:
    """SQL's view of one chunk: its fresh rows and its late ones (None: there are none)."""

    fresh: pa.RecordBatch | None
    late: pa.RecordBatch | None
    fresh_span: tuple[int, int]
    late_span: tuple[int, int]
    bytes: int


RECORD_KINDS = frozenset({"quarantine", "context", "alerts"})


@dataclass(frozen=True)
class _Pending:
    """Chunks `start:end` of a segment that its view lacks; those from `tail` on are not merged."""

    number: int
    part: _Segment
    start: int
    tail: int
    end: int


@dataclass(frozen=True)
class ViewPlan:
    """What `UnsealedData.plan_view` noted under the ingest lock, for `build_view` without it."""

    parts: list[_Segment]
    pending: list[_Pending]
    readings: bool
    quarantine: list[QuarantineRecord]
    context: list[ContextEvent]
    alerts: list[AlertEvent]


@dataclass(frozen=True)
class SegmentTables:
    """One or more segments as Arrow tables, ready for Parquet or SQL."""

    fresh: pa.Table
    late: pa.Table
    quarantine: pa.Table
    context: pa.Table
    alerts: pa.Table = field(default_factory=ALERTS_SCHEMA.empty_table)
    # True when fresh + late is already sorted by (machine, sensor, ts) and free of
    # repeated keys (prepared for sealing), so the writer need not sort it again.
    presorted: bool = False
    # True when every reading was checked against this writer's hot ring as it arrived, a
    # ring warmed from the lake (none unverified, none read back from the log): none can
    # repeat a reading of this writer's lake files, only of another writer's
    # (tiers.cold.ColdLake.write_segment).
    ring_checked: bool = False

    @property
    def readings(self) -> pa.Table:
        return pa.concat_tables([self.fresh, self.late]) if self.late.num_rows else self.fresh


def readings_table(machines: pa.Array, sensors: pa.Array, ts: np.ndarray, value: np.ndarray,
                   schema: pa.Schema = READINGS_SCHEMA) -> pa.Table:
    return pa.Table.from_arrays(
        [machines, sensors, pa.array(ts, type=pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
         pa.array(value, type=pa.float64())],
        schema=schema,
    )


def quarantine_table(records: list[QuarantineRecord]) -> pa.Table:
    return pa.Table.from_pydict({
        "received_at": [r.received_at for r in records],
        "topic": [r.topic for r in records],
        "reason": [r.reason for r in records],
        "payload": [r.payload for r in records],
    }, schema=QUARANTINE_SCHEMA)


def context_table(events: list[ContextEvent]) -> pa.Table:
    return pa.Table.from_pydict({
        "ts": [e.ts for e in events],
        "machine": [e.machine for e in events],
        "event": [e.event for e in events],
        "lot": [e.lot for e in events],
        "wafer": [e.wafer for e in events],
        "recipe": [e.recipe for e in events],
        "recipe_version": [e.recipe_version for e in events],
    }, schema=CONTEXT_SCHEMA)


def alerts_table(events: list[AlertEvent]) -> pa.Table:
    """Events as rows of the `alerts` files; no note is NULL (as in the payload), not ''."""
    columns = {name: [getattr(e, name) for e in events] for name in ALERTS_SCHEMA.names}
    columns["note"] = [e.note or None for e in events]
    return pa.Table.from_pydict(columns, schema=ALERTS_SCHEMA)


def merge_tables(a: SegmentTables, b: SegmentTables) -> SegmentTables:
    def both(name: str) -> pa.Table:
        x, y = getattr(a, name), getattr(b, name)
        if name in ("fresh", "late") and x.schema != y.schema:  # SQL's columns beside plain ones
            x, y = (t.select(READINGS_SCHEMA.names).cast(READINGS_SCHEMA) for t in (x, y))
        return pa.concat_tables([x, y])
    return SegmentTables(*(both(f) for f in ("fresh", "late", "quarantine", "context", "alerts")))


def tables_from_records(records: list) -> SegmentTables:
    """Tables of records read back from the log; all readings count as late (unchecked)."""
    batches = [r for r in records if isinstance(r, ReadingBatch)]
    machines, sensors, ts, value = [], [], [], []
    for batch in batches:
        names = np.array(batch.sensor_names, dtype=object)
        machines.append(np.full(len(batch.ts), batch.machine, dtype=object))
        sensors.append(names[batch.sensor_codes])
        ts.append(batch.ts)
        value.append(batch.value)
    if batches:
        readings = readings_table(pa.array(np.concatenate(machines), pa.string()),
                                  pa.array(np.concatenate(sensors), pa.string()),
                                  np.concatenate(ts), np.concatenate(value))
    else:
        readings = READINGS_SCHEMA.empty_table()
    return SegmentTables(
        fresh=READINGS_SCHEMA.empty_table(),
        late=readings,
        quarantine=quarantine_table([r for r in records if isinstance(r, QuarantineRecord)]),
        context=context_table([r for r in records if isinstance(r, ContextEvent)]),
        alerts=alerts_table([r for r in records if isinstance(r, AlertEvent)]),
    )


def _columns(parts: list[_Segment], name: str, dtype) -> np.ndarray:
    """One column of several segments' chunks, as one array. Each list is copied in one step
    (`tuple`) before it is read: `UnsealedData.tables` may merge a closed segment's chunks in
    another thread while a seal reads them here."""
    return np.concatenate([a for p in parts for a in tuple(getattr(p, name))] or [np.empty(0, dtype)])


_CHUNK_COLUMNS = ("key_ids", "ts", "value", "verified")
# Appended chunks merged into one block as they come, by the appending thread, once they hold
# this many rows (~1.4 MB copied every 64 k readings). A query then merges at most this many
# rows under the ingest lock, however long since the last one (it merged everything since:
# 0.3-0.75 s at 1 M readings/s after a pause of seconds), and SQL scans blocks of 64 k rows or
# more, whatever the size of the batches. 64 k, not 128 k: the statement builds the view of the
# unmerged tail itself, beside the ingest thread (`fabtier bench sql`, 340 k readings appended
# before each statement: `view` 6.1-6.8 -> 3.5 ms, `run` unchanged at 22.9 ms).
_MERGE_ROWS = 1 << 16
# A merged block's columns (int32 key ids, int64 ts, float64 value, bool verified), each on a
# cache line of its own. `tiers.backedblocks` backs what every such merge fills (at least
# `_MERGE_ROWS` rows: the chunk that crossed it adds the rest, which faults in as before) in
# blocks with room for one twice as long.
#
# Once SQL reads the rows, the block also holds its view's machine and sensor codes (int32
# each: `_CODE_BYTES` a row) after the columns, backed ahead with them: allocated apart, the
# two 256 KiB arrays of every block were fresh mappings whose pages faulted in the ingest
# thread and were given back at each seal (perf stat over 8 s of `fabtier bench ingest` at
# 4,000 sensors and 5 statements a second: most of the faults the statements added).
_ALIGN = 64
_ROW_BYTES = 4 + 8 + 8 + 1
_CODE_BYTES = 4 + 4
_BLOCK_BYTES = 2 * _MERGE_ROWS * _ROW_BYTES + len(_CHUNK_COLUMNS) * _ALIGN
_BACKED_BYTES = _MERGE_ROWS * (_ROW_BYTES + _CODE_BYTES) + (len(_CHUNK_COLUMNS) + 1) * _ALIGN
# Blocks freed (their segment sealed) kept to be handed out again, their pages still backed:
# as many as a segment fills (fabtier.ingestion closes one at 2 M readings: ~31 merged by
# appending, and one more for each statement's tail, ~7 at 5 statements a second and 1.5 M
# readings/s), up to ~75 MB resident.
_KEPT_BLOCKS = 40
# A statement's tail goes into a block once it holds this fraction of a block's rows or more
# (16 k: each column then 64 KiB or more; below, malloc's heap reuses its own pages).
_TAIL_IN_BLOCK = 4
# The loop that backs them (tiers.prefault's), once `back_blocks_ahead` has loaded it.
_populate: Callable[[int, int, int, int, int], int] | None = None


def back_blocks_ahead() -> None:
    """From now on, back the memory of the blocks appending merges before it copies into them,
    by a thread of each `UnsealedData`'s own (tiers.backedblocks), where the system supports it:
    for a process that ingests, before ingestion starts (compiling the loop holds the
    interpreter lock ~0.3 s, once per process)."""
    global _populate
    _populate = prefault.loaded()


def _joined(chunks: list[np.ndarray]) -> np.ndarray:
    """The chunks (one dtype, one dimension) as one read-only array, copied holding the
    interpreter lock: `np.concatenate` lets go of it for each chunk of 500 elements or more,
    and beside the ingest thread each time costs the caller a switch interval to get it back
    (a statement's tail of ~30 micro-batches, four columns: over a hundred hand-backs)."""
    if not all(c.flags.c_contiguous for c in chunks):
        return np.concatenate(chunks)
    return np.frombuffer(b"".join([c.data for c in chunks]), dtype=chunks[0].dtype)


def _joined_into(buffer: memoryview, columns: list[list[np.ndarray]], offsets: list[int], rows: int) -> list[np.ndarray]:
    """Each column's chunks copied one after another into `buffer` from its offset (see
    `_column_offsets`), holding the interpreter lock as `_joined` does; read-only arrays over it."""
    merged = []
    for chunks, offset in zip(columns, offsets[:-1], strict=True):
        at = offset
        for chunk in chunks:
            buffer[at:at + chunk.nbytes] = chunk.data.cast("B")
            at += chunk.nbytes
        array = np.frombuffer(buffer, chunks[0].dtype, count=rows, offset=offset)
        array.flags.writeable = False
        merged.append(array)
    return merged


def _column_offsets(columns: list[list[np.ndarray]], rows: int) -> list[int]:
    """Where each column starts in a merged block, each on a cache line of its own; the last
    entry is the block's size."""
    offsets, at = [], 0
    for chunks in columns:
        at = -(-at // _ALIGN) * _ALIGN
        offsets.append(at)
        at += rows * chunks[0].itemsize
    return offsets + [at]


def _merged(columns: list[list[np.ndarray]], blocks: BackedBlocks | None, codes: bool, *,
            least: int = 0) -> tuple[list[np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Each column's chunks (the same rows in each) as one read-only array, in a block of
    `blocks` where one is ready and the rows are `least` or more; with `codes`, also two int32
    arrays of the rows' length in the same block, for its view's machine and sensor codes
    (None: no block, or no room)."""
    rows = sum(len(chunk) for chunk in columns[0])
    buffer, room, offsets = None, None, _column_offsets(columns, rows)
    if blocks is not None and rows >= least and all(c.flags.c_contiguous for chunks in columns for c in chunks):
        codes_at = -(-offsets[-1] // _ALIGN) * _ALIGN
        with_codes = codes_at + rows * _CODE_BYTES
        if codes and with_codes <= blocks.size:
            buffer = blocks.take(with_codes)
            if buffer is not None:
                spare = np.frombuffer(buffer, np.int32, count=2 * rows, offset=codes_at)
                room = spare[:rows], spare[rows:]
        else:
            buffer = blocks.take(offsets[-1])
    merged = _joined_into(buffer, columns, offsets, rows) if buffer is not None else [_joined(c) for c in columns]
    return merged, room


def _merge_chunks(part: _Segment, start: int, blocks: BackedBlocks | None = None, *,
                  codes: bool = False) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
    """Chunks `start:` of each column merged into one array (the same rows, in the same
    order), each list changed in one step (`_merged`); the number of chunks that went away,
    and the room for the codes."""
    count = len(part.ts) - start
    room = None
    if count > 1:
        merged, room = _merged([getattr(part, name)[start:] for name in _CHUNK_COLUMNS], blocks, codes)
        for name, block in zip(_CHUNK_COLUMNS, merged, strict=True):
            getattr(part, name)[start:] = [block]
    return max(0, count - 1), room


def _sql_batch(part: _Segment, index: int, machine_codes: np.ndarray, machines: pa.Array,
               sensor_codes: np.ndarray, sensors: pa.Array) -> pa.RecordBatch:
    """Chunk `index` of a segment as Arrow: machine and sensor as each row's code into the
    distinct names (SensorKeys.name_codes, gathered by key id: 4 bytes a row each; SQL reads them
    as VARCHAR all the same), ts and value the chunk's own buffers, not copied."""
    return pa.RecordBatch.from_arrays([
        pa.array(part.value[index], type=pa.float64()),
        pa.array(part.ts[index], type=pa.int64()).view(SQL_SCHEMA.field("ts").type),
        # codes below the names' count by construction: not checked again (a pass over the rows)
        pa.DictionaryArray.from_arrays(pa.array(machine_codes, type=pa.int32()), machines, safe=False),
        pa.DictionaryArray.from_arrays(pa.array(sensor_codes, type=pa.int32()), sensors, safe=False),
    ], schema=SQL_SCHEMA)


# Bytes a reading holds here: key id (4), ts (8), value (8), verified flag (1).
BYTES_PER_READING = 21
# And once SQL's view holds it: its machine and sensor codes (4 each). A block that holds both
# fresh and late rows is copied into one batch of each (value, ts, two codes: 24).
BYTES_PER_VIEWED_READING = 8
BYTES_PER_SPLIT_READING = 24
# And each appended batch: four numpy array objects, their allocations' headers and list slots
# (~1 byte a reading more at 500-reading batches; ~500 bytes a reading for single readings).
BYTES_PER_CHUNK = 4 * (112 + 16 + 8)


def _stable_order(rank: np.ndarray, keys: int) -> np.ndarray:
    """`np.argsort(rank, kind="stable")` for ranks below `keys`, by numpy's radix sort: one
    pass of 16-bit digits up to 65,536 keys, two (low digits, then high) up to 2**32. numpy
    sorts wider integers stably by merging: 3 M rows of 100,000 keys took 409 ms that way and
    145 ms in two radix passes."""
    if keys <= 1 << 16:
        return np.argsort(rank.astype(np.uint16), kind="stable")
    if keys <= 1 << 32:
        by_low = np.argsort((rank & 0xFFFF).astype(np.uint16), kind="stable")
        return by_low[np.argsort((rank[by_low] >> 16).astype(np.uint16), kind="stable")]
    return np.argsort(rank, kind="stable")


def _chunk_view(part: _Segment, index: int, names: tuple[np.ndarray, pa.Array, np.ndarray, pa.Array],
                room: tuple[np.ndarray, np.ndarray] | None = None) -> _ChunkView:
    """SQL's view of chunk `index` of `part`: a batch of fresh rows or of late ones, or (a
    chunk holding both: copied) one of each. `room`: where to put the rows' machine and sensor
    codes (`_merge_chunks`'); None: new arrays."""
    key_codes_of_machine, machines, key_codes_of_sensor, sensors = names
    verified = part.verified[index]
    machine_codes, sensor_codes, fresh, fresh_span, late_span = block_columns(
        part.key_ids[index], key_codes_of_machine, key_codes_of_sensor, part.ts[index], verified, room)
    batch = _sql_batch(part, index, machine_codes, machines, sensor_codes, sensors)
    rows = len(verified)
    if fresh == rows:
        return _ChunkView(batch, None, fresh_span, late_span, BYTES_PER_VIEWED_READING * rows)
    if fresh == 0:
        return _ChunkView(None, batch, fresh_span, late_span, BYTES_PER_VIEWED_READING * rows)
    mask = pa.array(verified, type=pa.bool_())
    return _ChunkView(batch.filter(mask), batch.filter(pc.invert(mask)), fresh_span, late_span,
                      BYTES_PER_SPLIT_READING * rows)


def _add_view(part: _Segment, view: _ChunkView) -> None:
    if view.fresh is not None:
        part.fresh_batches.append(view.fresh)
        part.fresh_spans.append(view.fresh_span)
    if view.late is not None:
        part.late_batches.append(view.late)
        part.late_spans.append(view.late_span)


class UnsealedData:
    """Rows per log segment, from append until the segment is sealed."""

    def __init__(self, keys: SensorKeys) -> None:
        self._keys = keys
        self._segments: dict[int, _Segment] = {}
        self._rows = 0
        self._chunks = 0
        self._view_bytes = 0
        # Set by the first statement that reads the readings: from then on, appending makes the
        # view of each block it merges (`add_readings`), so that a statement only adds it.
        self._views_wanted = False
        self._blocks: BackedBlocks | None = None  # once `back_blocks_ahead` ran and a block was merged
        # One statement at a time extends the views (`tables`); taken before the ingest lock.
        self.view_lock = threading.Lock()
        # Set once the hot ring that verifies these rows was warmed from the lake (Pipeline.open):
        # until then it does not know what this writer stored before, and no segment is
        # `ring_checked`.
        self.ring_knows_lake = False

    def _segment(self, number: int) -> _Segment:
        found = self._segments.get(number)
        if found is None:
            found = self._segments[number] = _Segment()
        return found

    def add_readings(self, segment: int, key_ids: np.ndarray, ts: np.ndarray,
                     value: np.ndarray, verified: np.ndarray) -> None:
        target = self._segment(segment)
        target.key_ids.append(key_ids)
        target.ts.append(ts)
        target.value.append(value)
        target.verified.append(verified)
        target.rows += len(ts)
        self._rows += len(ts)
        self._chunks += 1
        target.unmerged += len(ts)
        if target.unmerged >= _MERGE_ROWS:
            if self._blocks is None and _populate is not None:
                self._blocks = BackedBlocks(self, _populate, size=_BLOCK_BYTES, backed=_BACKED_BYTES,
                                           keep=_KEPT_BLOCKS)
            gone, room = _merge_chunks(target, max(target.merged, target.viewed), self._blocks,
                                       codes=self._views_wanted)
            self._chunks -= gone
            target.merged, target.unmerged = len(target.ts), 0
            if self._views_wanted:
                # Here, not in the statement: the statement's thread gives the interpreter
                # lock up in each numpy and Arrow call of a view, and beside the ingest thread
                # each hand-back cost it a switch interval (a block of 128 k rows, ~0.5 ms of
                # this thread's time, took a statement 3-4 ms). Only the last merged chunks'
                # tail, under `_MERGE_ROWS` rows, is left to the statement.
                view = _chunk_view(target, len(target.ts) - 1, self._keys.name_codes(), room)
                target.prepared[id(target.ts[-1])] = view
                target.view_bytes += view.bytes
                self._view_bytes += view.bytes

    def add_quarantine(self, segment: int, record: QuarantineRecord) -> None:
        self._segment(segment).quarantine.append(record)

    def add_context(self, segment: int, event: ContextEvent) -> None:
        self._segment(segment).context.append(event)

    def add_alerts(self, segment: int, events: list[AlertEvent]) -> None:
        self._segment(segment).alerts.extend(events)

    def segments(self) -> list[int]:
        return sorted(self._segments)

    def rows_of(self, segment: int) -> int:
        """Readings held for one segment."""
        found = self._segments.get(segment)
        return found.rows if found is not None else 0

    @property
    def rows(self) -> int:
        """Readings held; a plain counter, so other threads may read it without the lock."""
        return self._rows

    @property
    def bytes(self) -> int:
        """Memory held by readings (what `[ingest] max_unsealed` limits): their columns,
        per appended batch the arrays' own overhead, and SQL's views of them; plain counters,
        as `rows`."""
        return BYTES_PER_READING * self._rows + BYTES_PER_CHUNK * self._chunks + self._view_bytes

    def pressure(self, limit: int) -> int:
        """How full, against `[ingest] max_unsealed` (`limit`): 0 not much; 1 over half of it,
        the seal is falling behind (seal early, and with the CPU priority of ingestion); 2 over
        it (hold acknowledgements back). A counter: no lock needed."""
        used = self.bytes
        return 2 if used > limit else 1 if used > limit // 2 else 0

    def drop(self, segment: int) -> None:
        dropped = self._segments.pop(segment, None)
        if dropped is not None:
            self._rows -= dropped.rows
            self._chunks -= len(dropped.ts)
            self._view_bytes -= dropped.view_bytes

    def sealable(self, segments: list[int]) -> SegmentTables:
        """The segments' rows for sealing: sorted by (machine, sensor, ts), first arrival of
        each key kept. Sorted on integers (each key's rank among the sorted names) with
        numpy, not on strings, because at a million readings a second this runs every
        minute over tens of millions of rows."""
        parts = [self._segments[s] for s in segments if s in self._segments]
        key_ids, ts, value = _columns(parts, "key_ids", np.int32), _columns(parts, "ts", np.int64), \
            _columns(parts, "value", np.float64)
        rank = self._keys.ranks()[key_ids]
        order = _stable_order(rank, len(self._keys))
        sorted_rank, sorted_ts = rank[order], ts[order]
        same_key = sorted_rank[1:] == sorted_rank[:-1]
        if np.any(same_key & (sorted_ts[1:] < sorted_ts[:-1])):
            order = np.lexsort((ts, rank))  # out-of-order arrivals: sort on ts too (stable)
            sorted_rank, sorted_ts = rank[order], ts[order]
            same_key = sorted_rank[1:] == sorted_rank[:-1]
        repeated = same_key & (sorted_ts[1:] == sorted_ts[:-1])
        if repeated.any():
            keep = np.concatenate([[True], ~repeated])
            order, sorted_ts = order[keep], sorted_ts[keep]
        machines, sensors = self._keys.name_dictionaries(key_ids[order])
        return SegmentTables(
            fresh=readings_table(machines, sensors, sorted_ts, value[order], schema=SEALING_SCHEMA),
            late=SEALING_SCHEMA.empty_table(),
            quarantine=quarantine_table([q for p in parts for q in p.quarantine]),
            context=context_table([c for p in parts for c in p.context]),
            alerts=alerts_table([a for p in parts for a in p.alerts]),
            presorted=True,
            ring_checked=self.ring_knows_lake and all(flags.all() for p in parts for flags in p.verified),
        )

    def plan_view(self, segments: list[int], *, readings: bool = True) -> ViewPlan:
        """The first step of `tables`, with the ingest lock held (chunks are appended under it)
        and `view_lock` too: note which chunks each segment's view lacks, and the quarantine,
        context and alert records. Copies nothing, so the ingest thread waits for a few list
        operations a segment, not for the view to be built (that is `build_view`'s, without the
        ingest lock). The chunks noted are the view's from now on: appending merges only the
        chunks after them."""
        numbered = [(s, self._segments[s]) for s in segments if s in self._segments]
        parts = [part for _, part in numbered]
        pending = []
        if readings:
            self._views_wanted = True
            for number, part in numbered:
                end = len(part.ts)
                if part.viewed < end:
                    pending.append(_Pending(number, part, part.viewed, max(part.merged, part.viewed), end))
                    part.viewed = part.merged = end
                    part.unmerged = 0
        return ViewPlan(parts=parts, pending=pending, readings=readings,
                        quarantine=[q for p in parts for q in p.quarantine],
                        context=[c for p in parts for c in p.context], alerts=[a for p in parts for a in p.alerts])

    def _merge_tail(self, noted: _Pending, lock: AbstractContextManager) -> tuple[np.ndarray, np.ndarray] | None:
        """The noted chunks after the merged blocks, merged into one block: the rows copied
        without the ingest lock, then put in the chunks' place under it (the rows stay the
        same, in the same order, so a seal reading the lists meanwhile sees either). Into a
        block backed ahead, as appending merges, with room for its view's codes (returned):
        copied into new memory, a statement's tail of up to 1.4 MB faulted in page by page."""
        part, tail, end = noted.part, noted.tail, noted.end
        # A short tail is left to the heap: a block each, at many statements a second, would
        # hold ~2 MB backed for a few readings.
        merged, room = _merged([getattr(part, name)[tail:end] for name in _CHUNK_COLUMNS], self._blocks, True,
                               least=_MERGE_ROWS // _TAIL_IN_BLOCK)
        with lock:
            for name, block in zip(_CHUNK_COLUMNS, merged, strict=True):
                getattr(part, name)[tail:end] = [block]
            gone = end - tail - 1
            part.viewed -= gone
            part.merged -= gone
            if self._holds(noted):  # not dropped (sealed) meanwhile
                self._chunks -= gone
        return room

    def _holds(self, noted: _Pending) -> bool:
        """Whether the noted segment is still held (not dropped, sealed, since it was noted)."""
        return self._segments.get(noted.number) is noted.part

    def _forget_view(self, noted: _Pending, lock: AbstractContextManager) -> None:
        """After a view could not be built: the next statement builds the segment's anew."""
        part = noted.part
        with lock:
            part.viewed = 0
            part.fresh_batches, part.late_batches, part.fresh_spans, part.late_spans = [], [], [], []
            part.prepared = {}
            if self._holds(noted):  # else drop() took its views' bytes off already
                self._view_bytes -= part.view_bytes
            part.view_bytes = 0

    def build_view(self, plan: ViewPlan, *, ts_bounds: tuple[int | None, int | None] | None = None,
                   lock: AbstractContextManager | None = None,
                   records: frozenset[str] = RECORD_KINDS) -> SegmentTables:
        """The second step of `tables`, with `view_lock` held and without the ingest lock
        (`lock`, taken only to put a merged block in its chunks' place). `records`: the
        kinds of records whose tables are built (the others are left empty)."""
        guard = lock if lock is not None else nullcontext()
        if plan.pending:
            names = self._keys.name_codes()
            for noted in plan.pending:
                part = noted.part
                try:
                    room = self._merge_tail(noted, guard) if noted.end - noted.tail > 1 else None
                    made = 0
                    for index in range(noted.start, part.viewed):  # merged blocks, the last the tail
                        view = part.prepared.pop(id(part.ts[index]), None)
                        if view is None:
                            view = _chunk_view(part, index, names, room if index == noted.tail else None)
                            made += view.bytes
                        _add_view(part, view)
                    if made:
                        with guard:  # the ingest thread counts prepared views under it
                            part.view_bytes += made
                            if self._holds(noted):
                                self._view_bytes += made
                except BaseException:
                    self._forget_view(noted, guard)
                    raise
        return self._shown(plan, ts_bounds, records)

    def tables(self, segments: list[int], *, readings: bool = True,
               ts_bounds: tuple[int | None, int | None] | None = None,
               lock: AbstractContextManager | None = None) -> SegmentTables:
        """The given segments' rows for SQL (SQL_SCHEMA), at a cost that does not grow with what is
        unsealed: each segment keeps its view (Arrow batches over its own arrays, no row
        copied) and extends it by the chunks appended since the last call: the blocks that
        appending merged (`_MERGE_ROWS` rows each), and the chunks after them merged into
        one (so that a segment's view has a few batches, not one per micro-batch). Rows are split
        into fresh and late per batch; only a batch that holds both is copied. `lock`: the
        ingest lock (not held by the caller), under which chunks are appended; it is held
        only while the chunks are noted and while a merged block takes their place
        (`plan_view`, `build_view`). `readings` False: the readings are left out (empty), for a
        reader that does not read them. `ts_bounds` ([lo, hi] epoch ms, None on a side: open):
        only the batches whose readings can fall within them, as the lake's files are pruned
        (recent minutes are a few batches of the tens of millions of rows unsealed at full
        rate)."""
        guard = lock if lock is not None else nullcontext()
        with self.view_lock:
            with guard:
                plan = self.plan_view(segments, readings=readings)
            return self.build_view(plan, ts_bounds=ts_bounds, lock=guard)

    def _shown(self, plan: ViewPlan, ts_bounds: tuple[int | None, int | None] | None,
               records: frozenset[str]) -> SegmentTables:
        """The plan's segments as tables: their views' batches within `ts_bounds`, and their records."""
        shown = plan.parts if plan.readings else []
        lo, hi = ts_bounds if ts_bounds is not None else (None, None)

        def within(batches: list[pa.RecordBatch], spans: list[tuple[int, int]]) -> list[pa.RecordBatch]:
            if lo is None and hi is None:
                return batches
            return [b for b, (first, last) in zip(batches, spans, strict=True) if span_may_hold(first, last, lo, hi)]

        return SegmentTables(
            fresh=pa.Table.from_batches([b for p in shown for b in within(p.fresh_batches, p.fresh_spans)],
                                        schema=SQL_SCHEMA),
            late=pa.Table.from_batches([b for p in shown for b in within(p.late_batches, p.late_spans)],
                                       schema=SQL_SCHEMA),
            quarantine=quarantine_table(plan.quarantine if "quarantine" in records else []),
            context=context_table(plan.context if "context" in records else []),
            alerts=alerts_table(plan.alerts if "alerts" in records else []),
        )
