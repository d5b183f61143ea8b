"""`fabtier cold ...` and `fabtier bench cold` as a user runs them (the console script)."""

from __future__ import annotations

import json
import os

import boto3

from tests.conftest import fabtier_cli


def _config(tmp_path, text: str):
    path = tmp_path / "fabtier.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n' + text, encoding="utf-8")
    return str(path)


def test_setup_secures_the_bucket_and_applies_the_lifecycle(tmp_path, moto_server):
    bucket, database = f"fabtier-setup-{os.getpid()}", f"fab_setup_{os.getpid()}"  # the server is shared
    config = _config(tmp_path, f'[cold]\nstore = "s3://{bucket}/lake"\nendpoint_url = "{moto_server}"\n'
                               f'[glue]\ndatabase = "{database}"\nendpoint_url = "{moto_server}"\n')
    # moto's server is plain HTTP: --require-tls adds the TLS statement anyway (see
    # tests/tiers/test_s3bucket_tls.py for what setup does without it).
    done = json.loads(fabtier_cli("cold", "setup", "--config", config, "--require-tls").stdout)["done"]
    assert f"created bucket {bucket}" in done and f"created Glue table {database}.readings" in done
    s3 = boto3.client("s3", endpoint_url=moto_server)
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert {r["ID"] for r in rules} == {f"fabtier-{kind}-{action}" for kind in ("raw", "agg_1m", "context", "alerts",
                                                                            "quarantine")
                                        for action in (("archive", "expire") if kind == "raw" else ("ia", "expire"))}
    # Again: nothing new is created, the policy statement is not doubled.
    again = json.loads(fabtier_cli("cold", "setup", "--config", config, "--require-tls").stdout)["done"]
    assert not any(line.startswith("created") for line in again)
    assert len(json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]) == 1


def test_iam_policy_is_least_privilege(tmp_path):
    config = _config(tmp_path, '[cold]\nstore = "s3://plant-lake/fab1"\n[glue]\ndatabase = "fab_lake"\n')
    policy = json.loads(fabtier_cli("cold", "iam-policy", "--config", config, "--account", "123456789012").stdout)
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert statements["FabtierLakeObjects"]["Resource"] == "arn:aws:s3:::plant-lake/fab1/*"
    assert statements["FabtierListLake"]["Condition"] == {"StringLike": {"s3:prefix": ["fab1/*"]}}
    actions = {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert not any(a.endswith("*") for a in actions)  # no wildcard actions
    assert "s3:PutBucketPolicy" not in actions and "s3:DeleteBucket" not in actions
    assert "arn:aws:glue:us-east-1:123456789012:table/fab_lake/readings" in statements["FabtierGlueCatalog"]["Resource"]


def test_lifecycle_document_is_printed_and_bad_ages_named(tmp_path):
    config = _config(tmp_path, '[cold]\nstore = "s3://plant-lake/fab1"\n')
    out = json.loads(fabtier_cli("cold", "lifecycle", "--config", config).stdout)
    assert [t["Days"] for t in out["s3_document"]["Rules"][0]["Transitions"]] == [90, 365]
    local = json.loads(fabtier_cli("cold", "lifecycle", "--config", _config(tmp_path, "")).stdout)
    assert "s3_document" not in local and local["rules"][1]["expire_after_s"] == 2555 * 86400
    # Short ages need a short max_late and compact_after (glacier_after must outlast both)
    bad = _config(tmp_path, '[cold]\nstore = "s3://plant-lake/fab1"\ncompact_after = "0s"\n[ingest]\nmax_late = "1h"\n'
                            '[lifecycle]\nglacier_after = "2h"\ndeep_archive_after = "5h"\nexpire_after = "400d"\n'
                            'cost_guard = false\n')
    result = fabtier_cli("cold", "lifecycle", "--config", bad, check=False)
    assert result.returncode == 2 and "[lifecycle]" in result.stderr and "whole days" in result.stderr
    assert "Traceback" not in result.stderr
    result = fabtier_cli("cold", "setup", "--config", _config(tmp_path, ""), check=False)
    assert result.returncode == 2 and "needs an S3 store" in result.stderr


def test_lifecycle_prints_the_policy_of_every_kind_of_data(tmp_path):
    out = json.loads(fabtier_cli("cold", "lifecycle", "--config",
                                 _config(tmp_path, '[cold]\nstore = "s3://plant-lake/fab1"\n')).stdout)
    kinds = out["kinds"]
    assert set(kinds) == {"raw", "agg_1m", "context", "alerts", "quarantine"}
    assert kinds["raw"]["prefix"] == "fab1/raw/" and kinds["raw"]["classes"] == ["STANDARD", "GLACIER", "DEEP_ARCHIVE"]
    assert [t["after_s"] for t in kinds["raw"]["transitions"]] == [90 * 86400, 365 * 86400]
    for kind in ("agg_1m", "context", "alerts", "quarantine"):
        assert kinds[kind]["prefix"] == f"fab1/{kind}/" and kinds[kind]["readable_throughout"]
        assert kinds[kind]["classes"] == ["STANDARD", "STANDARD_IA"]
        assert kinds[kind]["transitions"] == [{"after_s": 90 * 86400, "storage_class": "STANDARD_IA",
                                               "objects_larger_than_bytes": 128 * 1024}]
        assert kinds[kind]["expire_after_s"] == 2555 * 86400


def test_bench_cold_prints_figures_and_one_json_object_last():
    result = fabtier_cli("bench", "cold", "--seconds", "120", "--machines", "1", "--sensors", "3",
                         "--seal-every", "30s", "--repeat", "1", "--json")
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["bench"] == "cold" and last["data"]["segments"] == 4
    b = last["bytes_per_reading"]
    assert b["lake_compacted"] < b["parquet_pyarrow_defaults"] < b["csv"]
    assert last["exact"]["duckdb"] and last["exact"]["pyarrow"]
    assert last["exact"]["rows_read_back"] == last["data"]["readings"] > 0
    assert "bytes per reading" in result.stdout


def test_lifecycle_run_archives_on_a_local_store_and_tiers_shows_the_frozen_tier(tmp_path):
    import datetime as dt

    from core.clock import ManualClock
    from fabtier.config import load_settings
    from fabtier.pipeline import Pipeline

    config = _config(tmp_path, '[ingest]\nmax_late = "12h"\n'
                               '[lifecycle]\nglacier_after = "1d"\ndeep_archive_after = "2d"\n'
                               'expire_after = "3d"\nmin_object_size = 0\ncost_guard = false\n')
    settings = load_settings(config, env={})
    t0 = 1_800_000_000_000
    pipeline = Pipeline(settings, clock=ManualClock(t0))
    pipeline.open(warm=False)
    pipeline.process([("fab/etch-01", json.dumps({"ts": [t0 - 5000 + i for i in range(50)], "sensor": ["ch1/temp"] * 50,
                                                  "v": [20 + i / 4 for i in range(50)]}).encode(), 0, 0)])
    pipeline.wal.commit()
    pipeline.seal()
    pipeline.close_offline()

    def tiers():
        return {t["tier"]: t for t in json.loads(fabtier_cli("tiers", "--config", config, "--json").stdout)["tiers"]}

    assert tiers()["cold raw"]["rows"] == 50
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1, hours=1)).isoformat()
    reports = [json.loads(line) for line in fabtier_cli("lifecycle", "run", "--config", config, "--now", later).stdout.splitlines()]
    assert {r["job"]: r for r in reports}["lifecycle"]["transitions"] >= 1
    after = tiers()
    assert after["cold raw"]["rows"] == 0
    assert after["frozen raw (GLACIER, recorded locally)"]["rows"] == 50
    rows = json.loads(fabtier_cli("sql", "SELECT count(*) AS n FROM readings", "--config", config,
                                  "--format", "json").stdout)
    assert rows == [{"n": 0}]  # archived: not readable until restored, as on S3
