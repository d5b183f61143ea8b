"""The Glue table lets Athena read restored archived objects (`read_restored_glacier_objects`),
also a table an earlier version made without it."""

from __future__ import annotations

import os

import boto3

from lifecycle import glue

DB = f"fab_restored_{os.getpid()}"


def test_the_table_reads_restored_glacier_objects(s3_bucket):
    endpoint, bucket = s3_bucket
    client = boto3.client("glue", endpoint_url=endpoint, region_name="us-east-1")
    catalog = glue.GlueCatalog(database=DB, table="old", raw_location=f"s3://{bucket}/lake/raw/", region="us-east-1",
                               endpoint_url=endpoint)
    client.create_database(DatabaseInput={"Name": DB})
    earlier = glue.table_input("old", f"s3://{bucket}/lake/raw/")
    del earlier["Parameters"]["read_restored_glacier_objects"]
    client.create_table(DatabaseName=DB, TableInput=earlier)
    assert catalog.ensure_table() == [f"updated Glue table {DB}.old"]
    assert client.get_table(DatabaseName=DB, Name="old")["Table"]["Parameters"]["read_restored_glacier_objects"] == "true"
    assert catalog.ensure_table() == []
