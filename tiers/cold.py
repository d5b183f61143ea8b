"""The cold tier: the Parquet lake laid out as CONTRACT.md section 7 says.

Object keys derive from the data and the log segments they came from (tiers.layout), so
sealing a segment again after a crash replaces its files instead of adding copies. Before a
file is written, readings already in that hour's other files are removed, so the lake
stores each (machine, sensor, ts) once. Raw readings are split by value encoding (one file
per encoding, tiers.parquetformat), and merged later by compaction (tiers.compaction).

Every move is copy, verify, then delete: this module writes and verifies (row count and
checksum of the content read back) and hands back `Move`s; the caller records them in the
audit trail and only then calls the method that deletes the sources.

Reading: `raw_datasets` gives one pyarrow dataset per value encoding (a dataset has one
schema, and converting decimals to double in Arrow is not exact; DuckDB's cast is), with
each file's hour as its partition guarantee so that a time filter skips whole files
without opening them. `read_raw` gives exact float64 values to Python callers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core.protocols import ObjectStore
from tiers import catalog, layout
from tiers import parquetformat as fmt
from tiers.compaction import CompactionTask
from tiers.layout import LakeFile, segment_of  # noqa: F401 - segment_of is part of this module's API
from tiers.unsealed import (
    ALERTS_SCHEMA,
    CONTEXT_SCHEMA,
    QUARANTINE_SCHEMA,
    READINGS_SCHEMA,
    SegmentTables,
)

_TS = pa.timestamp("ms", tz="UTC")
# Scanner options for reads that bound their memory: one file and two batches ahead, not
# Arrow's default of several files and sixteen batches each (hundreds of MB in flight).
LEAN_SCAN = {"fragment_readahead": 1, "batch_readahead": 2}
_KEPT_DATASETS = 16  # ColdLake._reused: a raw dataset per value encoding, and the other kinds'
_SCHEMAS = {"raw": READINGS_SCHEMA, "quarantine": QUARANTINE_SCHEMA, "context": CONTEXT_SCHEMA,
            "alerts": ALERTS_SCHEMA}


class VerifyError(Exception):
    """A written object did not read back as written; the source is kept."""


@dataclass(frozen=True)
class Move:
    """One object written by a tier move, as the audit log records it."""

    what: str
    source: str
    target: str
    rows: int
    bytes: int
    checksum: str


@dataclass(frozen=True)
class SealReport:
    """What one seal run moved from the log into the lake."""

    segments: int
    rows: int
    files: int


def raw_schema(encoding: str) -> pa.Schema:
    return pa.schema([("machine", pa.string()), ("sensor", pa.string()), ("ts", _TS),
                      ("value", fmt.value_type(encoding))])


def write_verified(store: ObjectStore, key: str, table: pa.Table, *, what: str, source: str) -> Move:
    """Copy and verify: `table` as Parquet at `key`, read back and compared (rows and content
    checksum) before the move it returns can be audited."""
    data = fmt.to_parquet_bytes(table)
    store.put(key, data)
    expected = fmt.checksum(table)
    back = fmt.from_parquet_bytes(store.get(key), dictionaries=fmt.dictionary_columns(table))
    back = back.select(table.column_names)
    if back.num_rows != table.num_rows or fmt.checksum(back) != expected:
        raise VerifyError(f"{key} read back {back.num_rows} rows, wrote {table.num_rows}")
    return Move(what=what, source=source, target=f"{store.url}/{key}",
                rows=table.num_rows, bytes=len(data), checksum=expected)


class ColdLake:
    def __init__(self, store: ObjectStore, *, writer_id: str) -> None:
        self.store = store
        self.writer_id = writer_id
        self._fs, self._root = store.arrow_filesystem()
        self._format = ds.ParquetFileFormat()
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self._forked = False
        # Datasets by the files they hold (`_reused`): a statement over an unchanged lake takes
        # the last one's instead of building and freeing a fragment per file (each build and
        # free gives the interpreter lock up: beside the ingest thread, a switch interval each).
        self._datasets: dict[tuple, ds.Dataset] = {}

    def after_fork(self) -> None:
        """In a forked child: the store's clients of its own (the parent's pooled connections
        and I/O threads are the parent's). No Arrow S3 file system is built in the child:
        Arrow's S3 client lock may have been held by another thread of the parent at the fork,
        and the child's copy of it is never released (building one there deadlocked, seen
        with gdb in `ClientBuilder::BuildClient`). What the child reads (`_drop_stored`) it
        reads through the store's own client."""
        after_fork = getattr(self.store, "after_fork", None)
        if after_fork is not None:
            after_fork()
        self._forked = True
        self._datasets = {}  # over the parent's file system
        if self._local:
            self._fs, self._root = self.store.arrow_filesystem()

    # ---- listing --------------------------------------------------------------------
    def lake_files(self, kind: str, prefix: str | None = None) -> list[LakeFile]:
        """Every lake file of `kind` (under `prefix`, e.g. one hour's) in the store, readable
        or not, with size, time, class and whether an archived one is restored now."""
        found = []
        listing = getattr(self.store, "objects_with_stats", None)  # a catalog: with file statistics
        listed = (listing(prefix or f"{kind}/") if listing is not None
                  else [(info, None) for info in self.store.objects(prefix or f"{kind}/")])
        for info, stats in listed:
            parsed = layout.parse(info.key, size=info.size, last_modified_ms=info.last_modified_ms,
                                  archived=info.archived, storage_class=info.storage_class,
                                  restored=info.restored, restoring=info.archived and info.restore_ongoing,
                                  stats=stats)
            if parsed is not None:
                found.append(parsed)
        return found

    def visible_files(self, kind: str, hidden_segments=frozenset()) -> list[LakeFile]:
        return layout.visible(self.lake_files(kind), writer=self.writer_id, hidden_segments=set(hidden_segments))

    def files(self, kind: str, hidden_segments=frozenset()) -> list[str]:
        """Paths (for `arrow_filesystem`) of the `kind` files a reader reads: minus this
        writer's files of segments not sealed yet (their rows are still read from memory),
        files merged into a complete compacted set, and archived objects not restored now."""
        return [self._path(f.key) for f in self.visible_files(kind, hidden_segments)]

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}"

    def path(self, key: str) -> str:
        """The path of `key` on `arrow_filesystem` (what a dataset's fragments are named)."""
        return self._path(key)

    def local_root(self) -> str | None:
        """The lake's directory when it is on local disk (DuckDB can read its files itself),
        else None."""
        return self._root if self._local else None

    # ---- reading --------------------------------------------------------------------
    def _fragment(self, f: LakeFile) -> ds.Fragment:
        guarantee = None
        if f.hour is not None:
            start, end = fmt.hour_bounds_ms(f.day, f.hour)
            # Scalars made as timestamps, not cast to them: a cast is a compute call that lets go
            # of the interpreter lock, and beside the ingest thread each cost a statement a
            # switch interval (two a file: 44 files took 34 ms of `sources` beside a busy thread).
            guarantee = (ds.field("ts") >= pa.scalar(start, _TS)) & (ds.field("ts") < pa.scalar(end, _TS))
        return self._format.make_fragment(self._path(f.key), filesystem=self._fs,
                                          partition_expression=guarantee, file_size=f.size or None)

    def raw_datasets(self, hidden_segments=frozenset(), files: list[LakeFile] | None = None) -> list[ds.Dataset]:
        """One dataset per value encoding present (value DOUBLE or DECIMAL(18, s)); at least
        one, so that an empty lake is an empty table."""
        files = self.visible_files("raw", hidden_segments) if files is None else files
        groups: dict[str, list[LakeFile]] = {}
        for f in files:
            groups.setdefault(f.encoding, []).append(f)
        if not groups:
            return [ds.dataset(READINGS_SCHEMA.empty_table())]
        return [self._reused(("raw", encoding, tuple((f.key, f.size, f.day, f.hour) for f in members)),
                             functools.partial(self._raw_dataset, encoding, members))
                for encoding, members in sorted(groups.items())]

    def _raw_dataset(self, encoding: str, members: list[LakeFile]) -> ds.Dataset:
        """Raw files of one value encoding, each with its hour as its guarantee."""
        return ds.FileSystemDataset([self._fragment(f) for f in members], schema=raw_schema(encoding),
                                    format=self._format, filesystem=self._fs)

    def _reused(self, files: tuple, build: Callable[[], ds.Dataset]) -> ds.Dataset:
        """The dataset of `files` (what identifies them: kind, keys, sizes), built once while
        the lake keeps them; the latest few are kept."""
        found = self._datasets.get(files)
        if found is None:
            found = self._datasets[files] = build()
            for stale in list(self._datasets)[:-_KEPT_DATASETS]:  # oldest first; list(): one step
                self._datasets.pop(stale, None)
        return found

    def dataset(self, kind: str, hidden_segments=frozenset()) -> ds.Dataset:
        """The `quarantine`, `context` or `alerts` files as one dataset."""
        if kind == "raw":
            raise TypeError("raw files have one schema per value encoding: use raw_datasets() "
                            "(for DuckDB) or read_raw() (exact float64 values)")
        files = self.files(kind, set(hidden_segments))
        return self._reused((kind, tuple(files)), lambda: ds.dataset(files, filesystem=self._fs, format="parquet",
                                                                     schema=_SCHEMAS[kind]))

    def read_raw(self, filter: ds.Expression | None = None, hidden_segments=frozenset(),
                 files: list[LakeFile] | None = None, lean: bool = False) -> pa.Table:
        """Visible raw readings (or those of `files`) with value as float64, exactly; `lean`
        reads one file and a few batches at a time (`LEAN_SCAN`), for a filter that keeps
        little of much."""
        scan = LEAN_SCAN if lean else {}
        parts = [fmt.normalise_readings(d.to_table(filter=filter, **scan)).cast(READINGS_SCHEMA)
                 for d in self.raw_datasets(hidden_segments, files)]
        return pa.concat_tables(parts) if parts else READINGS_SCHEMA.empty_table()

    def raw_batches(self, f: LakeFile, filter: ds.Expression | None = None) -> Iterator[pa.Table]:
        """The readings of one raw file that `filter` keeps, a batch at a time in the file's
        order (machine, sensor, ts), with value as float64, exactly; memory for a few batches."""
        dataset = self._raw_dataset(f.encoding, [f])
        for batch in dataset.to_batches(filter=filter, **LEAN_SCAN):
            if batch.num_rows:
                yield fmt.normalise_readings(pa.Table.from_batches([batch])).cast(READINGS_SCHEMA)

    def readings_since(self, since_ms: int) -> pa.Table:
        """Raw readings with ts >= since_ms (to warm the hot ring on start)."""
        return self.read_raw(ds.field("ts") >= pa.scalar(since_ms, pa.int64()).cast(_TS))

    # ---- writing --------------------------------------------------------------------
    def _write_verified(self, key: str, table: pa.Table, what: str, source: str) -> Move:
        return write_verified(self.store, key, table, what=what, source=source)

    def _write_readings(self, key_of, readings: pa.Table, what: str, source: str,
                        uniform: bool = False) -> list[Move]:
        """Sorted, deduplicated readings into one verified file per value encoding (or, if
        `uniform` and some values need DOUBLE, all of them in one DOUBLE file)."""
        groups = fmt.split_by_encoding(readings)
        if uniform and fmt.DOUBLE in groups and len(groups) > 1:
            groups = {fmt.DOUBLE: readings}
        return [self._write_verified(key_of(encoding, i + 1, len(groups)),
                                     fmt.encode_values(part, encoding), what, source)
                for i, (encoding, part) in enumerate(sorted(groups.items()))]

    def _drop_stored(self, part: pa.Table, hour_files: list[LakeFile], segment: int,
                     ring_checked: bool) -> pa.Table:
        # A restored copy holds its readings as long as the archived object does: a reading in
        # it is stored already.
        others = [f for f in hour_files if f.readable
                  and not (f.writer == self.writer_id and not f.compacted and f.lo == segment)]
        if ring_checked:
            # The hot ring knows every reading this writer stored within its coverage (it is
            # warmed from the lake on start) and dropped those the broker delivered again:
            # only another writer's files can hold one of these. Reading this writer's files
            # of the hour and joining them was a fifth of the sealing process's CPU.
            others = [f for f in others if f.writer != self.writer_id]
        if not others:
            return part
        ts = part.column("ts")
        machines = pc.unique(part.column("machine"))
        if pa.types.is_dictionary(machines.type):
            machines = machines.cast(machines.type.value_type)
        wanted = ((ds.field("ts") >= pc.min(ts)) & (ds.field("ts") <= pc.max(ts))
                  & ds.field("machine").isin(machines))
        if self._forked and not self._local:  # no Arrow S3 file system in a child (after_fork)
            stored = pa.concat_tables([
                ds.dataset(pq.read_table(pa.BufferReader(self.store.get(f.key)), columns=["machine", "sensor", "ts"])
                           .cast(pa.schema([("machine", pa.string()), ("sensor", pa.string()), ("ts", _TS)])))
                .to_table(filter=wanted) for f in others])
        else:
            stored = pa.concat_tables([d.to_table(columns=["machine", "sensor", "ts"], filter=wanted)
                                       for d in self.raw_datasets(files=others)])
        if stored.num_rows == 0:
            return part
        plain = part.cast(READINGS_SCHEMA)  # names as plain strings, as the stored files have them
        stored = stored.append_column("_stored", pa.array([True] * stored.num_rows))
        joined = plain.join(stored, keys=["machine", "sensor", "ts"], join_type="left outer")
        kept = joined.filter(pc.is_null(joined.column("_stored"))).drop_columns(["_stored"])
        if kept.num_rows == part.num_rows:
            # Nothing was stored already (the usual case: the hour's other files hold other
            # readings of the same span). The join's output is in no order; `part` is sorted
            # and free of repeats, so it is the answer without sorting millions of rows again
            # (that sort was a third of the sealing process's CPU at full rate).
            return part
        return fmt.sort_dedup(kept.select(READINGS_SCHEMA.names))

    def write_segment(self, segment: int, tables: SegmentTables, source: str) -> list[Move]:
        """Write one log segment's rows into the lake, verified; returns what was written.

        Files this segment wrote earlier (a crashed seal) that the new write does not replace
        are deleted, so a re-run leaves exactly the new set."""
        moves = []
        readings = fmt.cast_keeping_dictionaries(tables.readings, READINGS_SCHEMA)
        if not tables.presorted:
            readings = fmt.sort_dedup(readings)
        for (day, hour), part in fmt.split_by_hour(readings).items():
            prefix = layout.hour_prefix(day, hour)
            hour_files = self.lake_files("raw", prefix)  # one hour's listing, not the whole lake
            part = self._drop_stored(part, hour_files, segment, tables.ring_checked)
            written = self._write_readings(
                lambda encoding, _i, _n, prefix=prefix:
                    prefix + layout.sealed_name(self.writer_id, segment, encoding),
                part, "raw", source)
            moves.extend(written)
            self._delete_stale(hour_files, segment, {m.target for m in written})
        for what, table, column in (("quarantine", tables.quarantine, "received_at"),
                                    ("context", tables.context, "ts"),
                                    ("alerts", tables.alerts, "ts")):
            for day, part in fmt.split_by_day(table, column).items():
                key = f"{what}/date={day}/{layout.sealed_name(self.writer_id, segment)}"
                moves.append(self._write_verified(key, part, what, source))
        catalog.flush(self.store)  # the catalog's manifests of the days written, then its markers
        return moves

    def _delete_stale(self, hour_files: list[LakeFile], segment: int, keep_targets: set[str]) -> None:
        for f in hour_files:
            if (f.writer == self.writer_id and not f.compacted and f.lo == segment
                    and f"{self.store.url}/{f.key}" not in keep_targets):
                self.store.delete(f.key)

    # ---- compaction ------------------------------------------------------------------
    def compact(self, task: CompactionTask, *, uniform: bool = False) -> list[Move]:
        """Copy and verify: write the merged set of `task`'s sources (nothing is deleted).
        `uniform`: one value type for the whole set (Athena reads a partition as one type)."""
        merged = fmt.sort_dedup(self.read_raw(files=list(task.sources)))
        source = (f"{self.store.url}/{task.prefix}{task.writer} segments {task.lo}..{task.hi} "
                  f"({len(task.sources)} files)")
        moves = self._write_readings(
            lambda encoding, i, n: task.prefix + layout.compacted_name(task.writer, task.lo, task.hi, i, n, encoding),
            merged, "compact", source, uniform)
        catalog.flush(self.store)
        return moves

    def delete_files(self, files: list[LakeFile] | tuple[LakeFile, ...]) -> None:
        """Delete merged sources or leftovers (after the audit trail has the move)."""
        for f in files:
            self.store.delete(f.key)
        catalog.flush(self.store)
