"""Export: a ready retrieval job's range as a Parquet dataset with the lake's schema, for
training a model on the frozen tier (issue 16: `fabtier retrieve --status ID --export DEST`).

The destination is a store URL (`file:///dir` or `s3://bucket/prefix`); the dataset is laid out
as the lake is (`raw/date=YYYY-MM-DD/hour=HH/`, Hive partitions, columns machine, sensor, ts,
value, one file per value encoding), so every reader of the lake reads it. Every file is
copied and verified (read back, rows and content checksum) and recorded in the audit trail
(`tier_moves`, job `export`); file names carry the job id, so exporting again replaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds

from core.errors import UserError
from core.protocols import ObjectStore
from lifecycle.audit import AuditLog
from tiers import parquetformat as fmt
from tiers.cold import ColdLake, Move, write_verified

_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class ExportReport:
    destination: str
    files: int
    rows: int
    bytes: int


def range_filter(start_ms: int, end_ms: int, machine: str | None, sensor: str | None) -> ds.Expression:
    """Readings of [start_ms, end_ms), of one machine and sensor where given."""
    where = ((ds.field("ts") >= pa.scalar(start_ms, pa.int64()).cast(_TS))
             & (ds.field("ts") < pa.scalar(end_ms, pa.int64()).cast(_TS)))
    if machine:
        where = where & (ds.field("machine") == machine)
    if sensor:
        where = where & (ds.field("sensor") == sensor)
    return where


def export_job(job: dict, *, lake: ColdLake, destination: ObjectStore, audit: AuditLog, at_ms: int) -> ExportReport:
    """Write the readings of a ready job's range (and machine/sensor) to `destination`."""
    if job.get("state") != "ready":
        raise UserError(f"retrieval job {job.get('id')} is {job.get('state')}: export it once it is ready "
                        f"(fabtier retrieve --status {job.get('id')})")
    readings = fmt.sort_dedup(lake.read_raw(range_filter(int(job["from"]), int(job["to"]),
                                                         job.get("machine"), job.get("sensor"))))
    source = f"{lake.store.url}/raw (retrieval job {job['id']})"
    moves: list[Move] = []
    for (day, hour), part in sorted(fmt.split_by_hour(readings).items()):
        groups = fmt.split_by_encoding(part)
        for encoding, group in sorted(groups.items()):
            key = f"raw/date={day}/hour={hour}/export-{job['id']}.{encoding}.parquet"
            moves.append(write_verified(destination, key, fmt.encode_values(group, encoding),
                                        what="export", source=source))
    audit.record("export", moves, at_ms)
    return ExportReport(destination=destination.url, files=len(moves), rows=sum(m.rows for m in moves),
                        bytes=sum(m.bytes for m in moves))
