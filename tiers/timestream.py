"""Amazon Timestream for LiveAnalytics as a sink (optional, off by default; LiveAnalytics takes
no new customers since 2025-06-20, see tiers/influx.py for the same sink over InfluxDB).

On start the database and table are created if missing and the table's retention is set
from `[timestream] memory_retention` and `magnetic_retention`; magnetic-store writes are
enabled, so late readings (up to `[ingest] max_late`) are accepted too. Writes go as
multi-measure records in requests of at most 100 (tiers/sinkformat.py). ThrottlingException
and other transient errors are retried with exponential backoff (botocore's own retries are
off, so that the policy is ours and visible); a RejectedRecordsException fails only the
records it names: each is counted and kept with its reason in the sink's stats, the rest of
the request is stored by Timestream and not sent again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.settings import TimestreamSettings
from ingest.codec import ReadingBatch
from tiers.sinkformat import timestream_requests
from tiers.sinks import SinkStats, backoff_seconds

log = logging.getLogger("fabtier.sinks")

RETRYABLE = {"ThrottlingException", "InternalServerException", "ServiceUnavailableException",
             "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException"}


def retention_properties(settings: TimestreamSettings) -> dict:
    return {
        "MemoryStoreRetentionPeriodInHours": max(1, math.ceil(settings.memory_retention / 3600)),
        "MagneticStoreRetentionPeriodInDays": max(1, math.ceil(settings.magnetic_retention / 86400)),
    }


class TimestreamDestination:
    name = "timestream"

    def __init__(self, settings: TimestreamSettings, *, client=None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self.client = client or boto3.client(
            "timestream-write", region_name=settings.region, endpoint_url=settings.endpoint_url or None,
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30))

    def prepare(self) -> None:
        """Create the database and table if missing; set the table's retention either way."""
        s = self.settings
        retention = retention_properties(s)
        magnetic = {"EnableMagneticStoreWrites": True}
        try:
            self.client.create_database(DatabaseName=s.database)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConflictException":
                raise
        try:
            self.client.create_table(DatabaseName=s.database, TableName=s.table,
                                     RetentionProperties=retention, MagneticStoreWriteProperties=magnetic)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConflictException":
                raise
            self.client.update_table(DatabaseName=s.database, TableName=s.table,
                                     RetentionProperties=retention, MagneticStoreWriteProperties=magnetic)

    def write(self, batches: list[ReadingBatch], stats: SinkStats) -> None:
        for common, records in timestream_requests(batches, self.settings.measure_name):
            self._write_request(common, records, stats)

    def _write_request(self, common: dict, records: list[dict], stats: SinkStats) -> None:
        s = self.settings
        for attempt in range(s.max_attempts):
            try:
                self.client.write_records(DatabaseName=s.database, TableName=s.table,
                                          CommonAttributes=common, Records=records)
                stats.sent_records += len(records)
                return
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "RejectedRecordsException":
                    self._rejected(common, records, exc.response.get("RejectedRecords", []), stats)
                    return
                if code not in RETRYABLE:
                    stats.failed_records += len(records)
                    stats.last_error = f"{code}: {exc}"
                    log.error("Timestream refused %d record(s): %s", len(records), exc)
                    return
                stats.last_error = f"{code} (attempt {attempt + 1})"
            except BotoCoreError as exc:  # connection trouble: as transient as throttling
                stats.last_error = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < s.max_attempts:
                stats.retries += 1
                self._sleep(backoff_seconds(attempt))
        stats.failed_records += len(records)
        log.error("Timestream: gave up on %d record(s) after %d attempts: %s",
                  len(records), s.max_attempts, stats.last_error)

    def _rejected(self, common: dict, records: list[dict], rejected: list[dict], stats: SinkStats) -> None:
        machine = common["Dimensions"][0]["Value"]
        for item in rejected:
            index = item.get("RecordIndex", -1)
            time_ms = records[index]["Time"] if 0 <= index < len(records) else None
            stats.rejections.append({"machine": machine, "time": time_ms, "reason": item.get("Reason", "")})
            log.warning("Timestream rejected the record of %s at %s: %s", machine, time_ms, item.get("Reason"))
        stats.rejected_records += len(rejected)
        stats.sent_records += len(records) - len(rejected)
