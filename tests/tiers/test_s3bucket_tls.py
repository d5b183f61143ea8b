"""`fabtier cold setup` against an S3 endpoint reached over plain HTTP (moto's server, as MinIO
without certificates): the bucket policy statement refusing requests without TLS would refuse
fabtier's own requests, so setup leaves it out with a WARNING (and removes the one an earlier
setup added), and a seal still works afterwards (issue 14)."""

from __future__ import annotations

import json
import logging

import boto3
import pytest

from tests.conftest import fabtier_cli, make_settings
from tiers import s3bucket
from tiers.store import S3Store, StoreError

FOREIGN = {"Sid": "SomeoneElses", "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteBucket",
           "Resource": "arn:aws:s3:::{bucket}"}


def _statements(endpoint: str, bucket: str) -> list[dict] | None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        return json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    except s3.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchBucketPolicy"
        return None


def test_setup_over_http_leaves_the_tls_statement_out_and_a_seal_still_works(tmp_path, s3_bucket):
    import pyarrow as pa

    from analytics.session import run_sql
    from fabtier.pipeline import Pipeline

    endpoint, bucket = s3_bucket
    config = tmp_path / "fabtier.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[cold]\nstore = "s3://{bucket}/lake"\n'
                      f'endpoint_url = "{endpoint}"\n', encoding="utf-8")
    result = fabtier_cli("cold", "setup", "--config", str(config))
    done = json.loads(result.stdout)["done"]
    assert "requests without TLS refused" not in done
    assert any(line.startswith("requests without TLS not refused") and endpoint in line for line in done), done
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert any("NOT refused" in line and "plain HTTP" in line and "--require-tls" in line for line in warnings), \
        result.stderr
    assert _statements(endpoint, bucket) is None  # nothing else was there: no policy at all

    settings = make_settings(tmp_path, None, cold={"store": f"s3://{bucket}/lake", "endpoint_url": endpoint})
    pipeline = Pipeline(settings)
    pipeline.open(warm=False)
    try:
        now = pipeline.clock.now_ms()
        pipeline.process([("fab/etch-01", json.dumps({"ts": [now - 3000, now - 2000, now - 1000],
                                                      "sensor": ["temp"] * 3, "v": [1.5, 2.5, 3.5]}).encode(), 0, 0)])
        pipeline.wal.commit()
        report = pipeline.seal()
        assert (report.segments, report.rows) == (1, 3) and report.files >= 1
        assert pipeline.metrics.seal_failures == 0 and pipeline.metrics.faults.problems() == []
        table = run_sql(pipeline.sql_sources(), "SELECT count(*) AS n FROM readings")
        assert table.equals(pa.table({"n": pa.array([3], pa.int64())}))
    finally:
        pipeline.close_offline()
    assert pipeline.lake.store.objects("raw/")  # in the bucket, not only in the log


def test_setup_over_http_removes_the_tls_statement_an_earlier_setup_added(s3_bucket, caplog):
    endpoint, bucket = s3_bucket
    store = S3Store(bucket, "lake", endpoint_url=endpoint)
    foreign = json.loads(json.dumps(FOREIGN).replace("{bucket}", bucket))
    store.client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17",
                                                                     "Statement": [foreign]}))
    with caplog.at_level(logging.WARNING, logger="fabtier.cold"):
        done = s3bucket.secure_bucket(store, require_tls=True)  # what earlier versions always did
    assert "requests without TLS refused" in done
    assert any("refuse fabtier's own requests" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert [s["Sid"] for s in _statements(endpoint, bucket)] == ["SomeoneElses", s3bucket.TLS_STATEMENT_ID]
    with pytest.raises(StoreError, match="403"):  # fabtier is locked out of its own bucket
        store.put("raw/probe.bin", b"x")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fabtier.cold"):
        done = s3bucket.secure_bucket(store)
    assert any(line.startswith(f"removed statement {s3bucket.TLS_STATEMENT_ID}") for line in done), done
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("removed the bucket policy statement" in m and endpoint in m for m in messages), messages
    assert _statements(endpoint, bucket) == [foreign]  # the statement fabtier does not own is kept
    store.put("raw/probe.bin", b"x")
    assert store.get("raw/probe.bin") == b"x"

    # Only fabtier's statement: the policy goes (S3 refuses one without statements).
    s3bucket.secure_bucket(store, require_tls=True)
    store.client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [s3bucket.tls_statement(bucket)]}))
    s3bucket.secure_bucket(store)
    assert _statements(endpoint, bucket) is None
    store.put("raw/probe.bin", b"y")


def test_the_endpoint_decides_whether_the_statement_is_added(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert s3bucket.uses_tls(S3Store("plant-lake", "fab1", region="us-east-1"))  # AWS: https
    assert s3bucket.uses_tls(S3Store("plant-lake", "fab1", endpoint_url="https://minio.fab.example:9000"))
    assert not s3bucket.uses_tls(S3Store("plant-lake", "fab1", endpoint_url="http://127.0.0.1:9000"))
