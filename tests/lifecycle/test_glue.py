"""The Glue catalog on moto's server: the table Athena would read, partition by partition."""

from __future__ import annotations

import decimal
import json
import os

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from lifecycle import coldjobs, glue
from tests.conftest import make_settings
from tiers import layout

HOUR = 3_600_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR
NOW = T0 + 2 * HOUR
DB = f"fab_lake_{os.getpid()}"  # moto's server lives for the whole session


def _settings(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    return make_settings(tmp_path, None, cold={"store": f"s3://{bucket}/lake", "endpoint_url": endpoint,
                                               "compact_after": "1h"},
                         glue={"database": DB, "table": "readings", "endpoint_url": endpoint})


def _ingest(pipeline, rows):
    for machine, sensor, ts, v in rows:
        pipeline.process([(f"fab/{machine}/{sensor}", json.dumps({"ts": ts, "v": v}).encode(), 0, 0)])
    pipeline.wal.commit()
    pipeline.seal()


def _athena_read(client, s3, fs, database, table):
    """What Athena does with the catalog: each partition's files, read with the partition's
    declared `value` type, then coerced to the table's type (decimal -> double)."""
    described = client.get_table(DatabaseName=database, Name=table)["Table"]
    table_types = {c["Name"]: c["Type"] for c in described["StorageDescriptor"]["Columns"]}
    assert table_types == {"machine": "string", "sensor": "string", "ts": "timestamp", "value": "double"}
    assert [k["Name"] for k in described["PartitionKeys"]] == ["date", "hour"]
    assert described["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")
    rows = {}
    for partition in client.get_partitions(DatabaseName=database, TableName=table)["Partitions"]:
        location = partition["StorageDescriptor"]["Location"]
        declared = {c["Name"]: c["Type"] for c in partition["StorageDescriptor"]["Columns"]}["value"]
        bucket, prefix = location[len("s3://"):].split("/", 1)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
        assert keys, location
        for key in keys:
            data = pq.read_table(f"{bucket}/{key}", filesystem=fs, partitioning=None)
            value_type = data.schema.field("value").type
            if declared == "double":
                assert value_type == pa.float64(), key
                values = data.column("value").to_pylist()
            else:
                scale = int(declared.split(",")[1].rstrip(")"))
                assert pa.types.is_decimal(value_type) and value_type.scale <= scale, (key, declared)
                values = [float(decimal.Decimal(v)) for v in data.column("value").to_pylist()]
            for m, s, t, v in zip(data.column("machine").to_pylist(), data.column("sensor").to_pylist(),
                                  data.column("ts").cast(pa.int64()).to_pylist(), values, strict=True):
                assert (m, s, t) not in rows
                rows[(m, s, t)] = v
        assert partition["Values"] == [location.split("date=")[1][:10], location.split("hour=")[1][:2]]
    return rows


def test_glue_table_and_partitions_read_the_lake_as_it_is(tmp_path, s3_bucket):
    settings = _settings(tmp_path, s3_bucket)
    pipeline = Pipeline(settings, clock=ManualClock(NOW))
    pipeline.open(warm=False)
    expected = {}
    for segment in range(3):
        rows = [("etch-01", "ch1/temp", T0 + segment * 1000 + i, round(40 + i * 0.01 + segment, 2)) for i in range(10)]
        rows += [("cvd-01", "rf/power", T0 + HOUR + segment * 1000 + i, 0.1 * (i + 1)) for i in range(3)]
        rows += [("cvd-01", "stage/vib", T0 + HOUR + segment * 1000 + i, round(0.005 * i, 3)) for i in range(3)]
        _ingest(pipeline, rows)
        expected.update({(m, s, t): v for m, s, t, v in rows})

    report = coldjobs.sync_glue(pipeline)
    # hour 0: decimals only; hour 1 mixes DOUBLE and DECIMAL files until compaction
    assert (report["created"], report["mixed"]) == (1, 1)
    client = boto3.client("glue", endpoint_url=settings.glue.endpoint_url, region_name="us-east-1")
    s3 = boto3.client("s3", endpoint_url=settings.cold.endpoint_url)
    fs, _ = pipeline.lake.store.arrow_filesystem()

    coldjobs.compact(pipeline, now_ms=NOW + 2 * HOUR)  # Glue configured: uniform sets per hour
    report = coldjobs.sync_glue(pipeline)
    assert (report["created"], report["mixed"]) == (1, 0)
    types = {tuple(p["Values"]): {c["Name"]: c["Type"] for c in p["StorageDescriptor"]["Columns"]}["value"]
             for p in client.get_partitions(DatabaseName=DB, TableName="readings")["Partitions"]}
    hours = sorted(types)
    assert [types[h] for h in hours] == ["decimal(18,2)", "double"]
    got = _athena_read(client, s3, fs, DB, "readings")
    assert got.keys() == expected.keys()
    assert all(np.float64(got[k]).view(np.int64) == np.float64(expected[k]).view(np.int64) for k in expected)

    # Nothing to change: a second run leaves the catalog as it is.
    again = coldjobs.sync_glue(pipeline)
    assert (again["created"], again["updated"], again["deleted"], again["changes"]) == (0, 0, 0, [])
    pipeline.close_offline()


def test_partition_plan():
    def f(hour, enc):
        return layout.parse(f"raw/date=2027-01-15/hour={hour}/w0-000000000001.{enc}.parquet")

    files = [f("08", "d2"), f("08", "d3"), f("09", "f64"), f("10", "d1"), f("10", "f64")]
    plan = glue.plan_partitions(files, {("2027-01-15", "09"): "decimal(18,2)", ("2027-01-15", "07"): "double"})
    assert plan.create == {("2027-01-15", "08"): "decimal(18,3)"}
    assert plan.update == {("2027-01-15", "09"): "double"}
    assert plan.delete == [("2027-01-15", "07")]
    assert plan.mixed == [("2027-01-15", "10")]
