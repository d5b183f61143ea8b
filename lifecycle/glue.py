"""The lake in the AWS Glue Data Catalog, so that Athena (engine v3) queries it as it is.

One external Parquet table over `{store}/raw/` with the contract's columns (`value` DOUBLE)
and the Hive partitions `date` and `hour` (strings), and one catalog partition per hour of
data. Each partition declares the value type its files hold: `decimal(18,s)` (s the finest
scale among its files; Athena's Parquet reader rescales the coarser ones) or `double`, and
Athena coerces a partition's decimal to the table's double. That per-partition type is why
partitions are registered rather than projected: partition projection would make every
hour use the table's type. An hour whose files mix DOUBLE and DECIMAL has no such type and
is not registered until compaction makes it uniform (fabtier compacts uniformly when Glue
is configured). The partitions follow what fabtier's SQL can read: an hour whose objects are
archived is not registered, and is again while restored copies of them last; the table
property `read_restored_glacier_objects` makes Athena read those copies (it skips archived
objects otherwise).

Athena reads every file of a partition, so in the seconds between a compacted set being
written and its sources being deleted (or until the next compaction run, after a crash) an
Athena query of that hour can see readings twice; fabtier's own SQL never does.

`plan_partitions` is pure; `sync` is the thin boto3 adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from tiers import parquetformat as fmt
from tiers.layout import LakeFile

COLUMNS = [{"Name": "machine", "Type": "string"}, {"Name": "sensor", "Type": "string"},
           {"Name": "ts", "Type": "timestamp"}, {"Name": "value", "Type": "double"}]
PARTITION_KEYS = [{"Name": "date", "Type": "string"}, {"Name": "hour", "Type": "string"}]
_SERDE = {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
          "Parameters": {"serialization.format": "1"}}
_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"


def value_type_of(encodings: set[str]) -> str | None:
    """The Glue type of `value` for files of these encodings, None when they mix."""
    if not encodings:
        return None
    if encodings == {fmt.DOUBLE}:
        return "double"
    if fmt.DOUBLE in encodings:
        return None
    # no DOUBLE here, so every encoding has a scale
    return f"decimal(18,{max(s for e in encodings if (s := fmt.scale_of(e)) is not None)})"


def storage_descriptor(location: str, value_type: str = "double") -> dict:
    columns = [dict(c) for c in COLUMNS]
    columns[-1]["Type"] = value_type
    return {"Columns": columns, "Location": location, "InputFormat": _INPUT, "OutputFormat": _OUTPUT,
            "Compressed": True, "SerdeInfo": _SERDE, "StoredAsSubDirectories": False}


def table_input(table: str, raw_location: str) -> dict:
    return {
        "Name": table,
        "Description": "fabtier raw sensor readings (CONTRACT.md section 7)",
        "TableType": "EXTERNAL_TABLE",
        # Athena skips objects in GLACIER and DEEP_ARCHIVE; with this it reads those restored
        # (`fabtier retrieve`), as fabtier's own SQL does, while their copies last.
        "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE", "parquet.compression": "ZSTD",
                       "read_restored_glacier_objects": "true"},
        "StorageDescriptor": storage_descriptor(raw_location),
        "PartitionKeys": PARTITION_KEYS,
    }


@dataclass(frozen=True)
class PartitionPlan:
    create: dict[tuple[str, str], str]  # (date, hour) -> value type
    update: dict[tuple[str, str], str]
    delete: list[tuple[str, str]]
    mixed: list[tuple[str, str]]  # hours Athena cannot read as one type (yet)


def plan_partitions(files: list[LakeFile], registered: dict[tuple[str, str], str]) -> PartitionPlan:
    """What to change in the catalog for the lake's visible, readable raw `files`, given the
    partitions `registered` now ((date, hour) -> value type)."""
    encodings: dict[tuple[str, str], set[str]] = {}
    for f in files:
        if f.kind == "raw" and f.hour is not None:
            encodings.setdefault((f.day, f.hour), set()).add(f.encoding)
    create, update, mixed = {}, {}, []
    for hour, found in sorted(encodings.items()):
        wanted = value_type_of(found)
        if wanted is None:
            mixed.append(hour)
        elif hour not in registered:
            create[hour] = wanted
        elif registered[hour] != wanted:
            update[hour] = wanted
    delete = sorted(h for h in registered if h not in encodings)
    return PartitionPlan(create, update, delete, mixed)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class GlueCatalog:
    """boto3 adapter: the database, the table and its partitions."""

    def __init__(self, *, database: str, table: str, raw_location: str, region: str, endpoint_url: str = "") -> None:
        import boto3

        self.database, self.table = database, table
        self.raw_location = raw_location.rstrip("/") + "/"
        self.client = boto3.client("glue", region_name=region, endpoint_url=endpoint_url or None)

    def ensure_table(self) -> list[str]:
        done = []
        try:
            self.client.get_database(Name=self.database)
        except self.client.exceptions.EntityNotFoundException:
            self.client.create_database(DatabaseInput={"Name": self.database,
                                                       "Description": "fabtier sensor data lake"})
            done.append(f"created Glue database {self.database}")
        wanted = table_input(self.table, self.raw_location)
        try:
            current = self.client.get_table(DatabaseName=self.database, Name=self.table)["Table"]
            if (current.get("StorageDescriptor", {}).get("Columns") != wanted["StorageDescriptor"]["Columns"]
                    or current.get("PartitionKeys") != wanted["PartitionKeys"]
                    or current.get("StorageDescriptor", {}).get("Location") != self.raw_location
                    or current.get("Parameters", {}).get("read_restored_glacier_objects") != "true"):
                self.client.update_table(DatabaseName=self.database, TableInput=wanted)
                done.append(f"updated Glue table {self.database}.{self.table}")
        except self.client.exceptions.EntityNotFoundException:
            self.client.create_table(DatabaseName=self.database, TableInput=wanted)
            done.append(f"created Glue table {self.database}.{self.table}")
        return done

    def registered(self) -> dict[tuple[str, str], str]:
        found = {}
        pages = self.client.get_paginator("get_partitions").paginate(DatabaseName=self.database, TableName=self.table)
        for page in pages:
            for p in page["Partitions"]:
                columns = {c["Name"]: c["Type"] for c in p["StorageDescriptor"]["Columns"]}
                found[tuple(p["Values"])] = columns.get("value", "double")
        return found

    def _partition_input(self, hour: tuple[str, str], value_type: str) -> dict:
        day, hh = hour
        location = f"{self.raw_location}date={day}/hour={hh}/"
        return {"Values": [day, hh], "StorageDescriptor": storage_descriptor(location, value_type)}

    def apply(self, plan: PartitionPlan) -> None:
        # Glue takes at most 100 partitions per batch call, and 25 per batch update.
        for batch in _chunks(sorted(plan.create.items()), 100):
            self.client.batch_create_partition(
                DatabaseName=self.database, TableName=self.table,
                PartitionInputList=[self._partition_input(h, t) for h, t in batch])
        for batch in _chunks(sorted(plan.update.items()), 25):
            self.client.batch_update_partition(
                DatabaseName=self.database, TableName=self.table,
                Entries=[{"PartitionValueList": list(h), "PartitionInput": self._partition_input(h, t)}
                         for h, t in batch])
        for batch in _chunks(plan.delete, 25):
            self.client.batch_delete_partition(
                DatabaseName=self.database, TableName=self.table,
                PartitionsToDelete=[{"Values": list(h)} for h in batch])


def catalog_for(settings, store) -> GlueCatalog | None:
    """The catalog of the configuration, or None when `[glue] database` is empty."""
    if not settings.glue.database:
        return None
    return GlueCatalog(database=settings.glue.database, table=settings.glue.table,
                       raw_location=f"{store.url}/raw/", region=settings.cold.region,
                       endpoint_url=settings.glue.endpoint_url)
