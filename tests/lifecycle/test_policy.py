"""The lifecycle document per configuration, S3's rules, and the local evaluation."""

import math

import boto3
import pytest

from core.errors import ConfigError
from core.records import ObjectInfo as ObjectState
from core.settings import LifecycleSettings
from core.units import parse_duration, parse_size
from lifecycle import policy
from tiers.s3bucket import apply_lifecycle, lifecycle_rules
from tiers.store import S3Store

DAY_MS = 86_400_000
KIB = 1024
READABLE = ("agg_1m", "context", "alerts", "quarantine")


def lifecycle(**values):
    """`[lifecycle]` alone: the policy is a pure function of it (the configuration's own check
    that glacier_after outlasts [ingest] max_late and compaction is tested in test_config)."""
    parse = {"min_object_size": parse_size, "cost_guard": bool}
    return LifecycleSettings(**{k: parse.get(k, parse_duration)(v) for k, v in values.items()})


def _prefix(rule: dict) -> str:
    return rule["Filter"].get("And", rule["Filter"])["Prefix"]


def _rules_of(document: dict, prefix: str) -> list[dict]:
    return [r for r in document["Rules"] if _prefix(r) == prefix]


def test_default_document_archives_at_90_and_365_days_and_expires_at_2555():
    document = policy.s3_document(policy.policy_from_settings(lifecycle(), prefix="lake/"))
    archive, expire = _rules_of(document, "lake/raw/")
    assert archive["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER"},
                                      {"Days": 365, "StorageClass": "DEEP_ARCHIVE"}]
    # above S3's 128 KiB default and above the size where a transition pays for itself
    assert archive["Filter"]["And"]["ObjectSizeGreaterThan"] > 128 * 1024
    assert expire == {"ID": "fabtier-raw-expire", "Status": "Enabled", "Filter": {"Prefix": "lake/raw/"},
                      "Expiration": {"Days": 2555}}
    assert policy.validate_s3_document(document) == []


def test_every_kind_of_data_has_its_own_rules_and_only_raw_is_archived():
    document = policy.s3_document(policy.policy_from_settings(lifecycle(), prefix="lake/"))
    # Rules per prefix under the store's own: nothing else under it is ever touched
    assert {_prefix(r) for r in document["Rules"]} == {f"lake/{k}/" for k in ("raw", *READABLE)}
    for kind in READABLE:
        ia, expire = _rules_of(document, f"lake/{kind}/")
        # STANDARD_IA after glacier_after, only for objects S3 moves there (128 KiB and more)
        assert ia["Transitions"] == [{"Days": 90, "StorageClass": "STANDARD_IA"}], kind
        assert ia["Filter"] == {"And": {"Prefix": f"lake/{kind}/", "ObjectSizeGreaterThan": 128 * KIB}}
        assert expire == {"ID": f"fabtier-{kind}-expire", "Status": "Enabled", "Filter": {"Prefix": f"lake/{kind}/"},
                          "Expiration": {"Days": 2555}}
    described = policy.describe(policy.policy_from_settings(lifecycle(), prefix="lake/"))
    assert described["raw"]["classes"] == ["STANDARD", "GLACIER", "DEEP_ARCHIVE"]
    assert not described["raw"]["readable_throughout"]
    assert all(described[k]["classes"] == ["STANDARD", "STANDARD_IA"] and described[k]["readable_throughout"]
               for k in READABLE)


def test_local_evaluation_keeps_every_kind_but_raw_readable_and_touches_nothing_else():
    rules = policy.policy_from_settings(lifecycle(glacier_after="31d", deep_archive_after="62d",
                                                  expire_after="400d", min_object_size=0, cost_guard=False))
    t0 = 1_800_000_000_000
    big, small = 200 * KIB, 1000
    objects = [ObjectState("raw/date=2027-01-15/hour=08/w0-000000000001.f64.parquet", small, t0),
               ObjectState("alerts/date=2027-01-15/w0-000000000001.parquet", small, t0),
               ObjectState("context/date=2027-01-15/w0-000000000001.parquet", small, t0),
               ObjectState("quarantine/date=2027-01-15/w0-000000000001.parquet", big, t0),
               ObjectState("agg_1m/date=2027-01-15/w0.parquet", big, t0),
               ObjectState(".storage-classes.json", big, t0), ObjectState("notes/readme.txt", big, t0)]

    def at(days):
        return {(a.key.split("/")[0], a.kind, a.to_class) for a in policy.evaluate(rules, objects, t0 + days * DAY_MS)}
    assert at(30) == set()
    ia = {("quarantine", "transition", "STANDARD_IA"), ("agg_1m", "transition", "STANDARD_IA")}
    assert at(31) == {("raw", "transition", "GLACIER")} | ia
    assert at(62) == {("raw", "transition", "DEEP_ARCHIVE")} | ia
    assert at(400) == {(k, "expire", None) for k in ("raw", *READABLE)}


def test_standard_ia_only_where_s3_allows_it_and_it_pays():
    # S3 refuses a transition to STANDARD_IA before day 30: the other kinds stay STANDARD
    early = policy.policy_from_settings(lifecycle(glacier_after="10d", deep_archive_after="20d",
                                                  expire_after="400d", cost_guard=False), prefix="")
    assert {t.storage_class for r in early.rules for t in r.transitions} == {"GLACIER", "DEEP_ARCHIVE"}
    assert policy.validate_s3_document(policy.s3_document(early)) == []
    # Ten days in STANDARD_IA before expiry never pay for its 30 billed days
    short = policy.policy_from_settings(lifecycle(glacier_after="90d", deep_archive_after="95d",
                                                  expire_after="100d"), prefix="")
    assert "STANDARD_IA" not in {t.storage_class for r in short.rules for t in r.transitions}
    assert {r.kind for r in short.rules if r.expire_after_s == 100 * 86_400} == {"raw", *READABLE}
    # Bigger thresholds stay the user's: min_object_size above 128 KiB holds for IA too
    large = policy.policy_from_settings(lifecycle(min_object_size="1MiB"), prefix="")
    assert {r.min_size for r in large.rules if r.transitions and r.kind != "raw"} == {1 << 20}


def test_short_ages_round_up_to_whole_days_on_s3():
    rules = policy.policy_from_settings(lifecycle(glacier_after="36h", deep_archive_after="200d",
                                                  expire_after="400d", cost_guard=False), prefix="")
    archive, expire = _rules_of(policy.s3_document(rules), "raw/")
    assert [t["Days"] for t in archive["Transitions"]] == [2, 200]
    assert expire["Expiration"] == {"Days": 400}


def test_ages_that_collide_in_days_are_refused_before_anything_is_sent():
    rules = policy.policy_from_settings(lifecycle(glacier_after="5s", deep_archive_after="10s",
                                                  expire_after="20s", cost_guard=False), prefix="")
    with pytest.raises(ConfigError) as err:
        policy.s3_document(rules)
    assert "[lifecycle]" in str(err.value) and "whole days" in str(err.value)


@pytest.mark.parametrize("document, fragment", [
    ({"Rules": []}, "at least one rule"),
    ({"Rules": [{"ID": "a", "Status": "On", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}]}, "Status"),
    ({"Rules": [{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": "", "Tag": {}},
                 "Expiration": {"Days": 1}}]}, "exactly one"),
    ({"Rules": [{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""}}]}, "at least one action"),
    ({"Rules": [{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""},
                 "Transitions": [{"Days": 30, "StorageClass": "DEEP_ARCHIVE"},
                                 {"Days": 60, "StorageClass": "GLACIER"}]}]}, "must come after"),
    ({"Rules": [{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""},
                 "Transitions": [{"Days": 10, "StorageClass": "STANDARD_IA"}]}]}, "Days >= 30"),
    ({"Rules": [{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""},
                 "Transitions": [{"Days": 1.5, "StorageClass": "GLACIER"}]}]}, "whole number"),
    ({"Rules": [{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""},
                 "Transitions": [{"Days": 90, "StorageClass": "GLACIER"}], "Expiration": {"Days": 90}}]},
     "Expiration must come after"),
    ({"Rules": [{"ID": "a", "Status": "Enabled",
                 "Filter": {"And": {"ObjectSizeGreaterThan": 10, "ObjectSizeLessThan": 5}},
                 "Expiration": {"Days": 1}}]}, "less than"),
    ({"Rules": [{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 5}},
                {"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 6}}]}, "unique"),
])
def test_s3_rules_are_checked(document, fragment):
    problems = policy.validate_s3_document(document)
    assert any(fragment in p for p in problems), problems


def test_break_even_sizes():
    # Nine months in Glacier pay for the request and the 40 KB overhead from about 195 KiB on
    assert 150_000 < policy.break_even_size("STANDARD", "GLACIER", 9.0) < 250_000
    # Archiving for less than the minimum duration billed at a higher price never pays
    assert policy.break_even_size("STANDARD", "DEEP_ARCHIVE", 0.01) == math.inf
    # The longer it stays, the smaller the objects worth moving
    assert policy.break_even_size("GLACIER", "DEEP_ARCHIVE", 72) < policy.break_even_size("GLACIER", "DEEP_ARCHIVE", 12)


def test_a_class_that_never_pays_is_left_out():
    # Deep Archive two weeks before expiry: billed 180 days, it costs more than Glacier
    rules = policy.policy_from_settings(lifecycle(glacier_after="90d", deep_archive_after="300d",
                                                  expire_after="314d"))
    (archive,) = [r for r in rules.rules if r.id == "fabtier-raw-archive"]
    assert [t.storage_class for t in archive.transitions] == ["GLACIER"]


def test_local_evaluation_uses_exact_ages():
    rules = policy.policy_from_settings(lifecycle(glacier_after="5s", deep_archive_after="10s",
                                                  expire_after="20s", min_object_size=100,
                                                  cost_guard=False))
    t0 = 1_800_000_000_000
    objects = [ObjectState("raw/big", 1000, t0), ObjectState("raw/small", 50, t0),
               ObjectState("raw/glacier", 1000, t0, "GLACIER")]
    at = lambda s: {(a.key, a.kind, a.to_class) for a in policy.evaluate(rules, objects, t0 + int(s * 1000))}  # noqa: E731
    assert at(4.999) == set()
    assert at(5) == {("raw/big", "transition", "GLACIER")}
    assert at(10) == {("raw/big", "transition", "DEEP_ARCHIVE"), ("raw/glacier", "transition", "DEEP_ARCHIVE")}
    assert at(20) == {("raw/big", "expire", None), ("raw/small", "expire", None), ("raw/glacier", "expire", None)}


def test_local_evaluation_and_s3_document_are_one_policy():
    # The same objects, ages in whole days: what fabtier does locally is what S3's rules say.
    rules = policy.policy_from_settings(lifecycle(), prefix="")
    document = policy.s3_document(rules)
    threshold = _rules_of(document, "raw/")[0]["Filter"]["And"]["ObjectSizeGreaterThan"]
    t0 = 1_800_000_000_000
    objects = [ObjectState("raw/a", threshold + 1, t0), ObjectState("raw/b", threshold, t0)]
    for days, expected in ((89, set()), (90, {("raw/a", "GLACIER")}), (365, {("raw/a", "DEEP_ARCHIVE")})):
        got = {(a.key, a.to_class) for a in policy.evaluate(rules, objects, t0 + days * DAY_MS)}
        assert got == expected, days
    assert {a.kind for a in policy.evaluate(rules, objects, t0 + 2555 * DAY_MS)} == {"expire"}


def test_the_bucket_gets_the_document_and_keeps_foreign_rules(s3_bucket):
    endpoint, bucket = s3_bucket
    store = S3Store(bucket, "lake", endpoint_url=endpoint)
    client = boto3.client("s3", endpoint_url=endpoint)
    foreign = {"ID": "someone-else", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [foreign]})
    document = policy.s3_document(policy.policy_from_settings(lifecycle(), prefix="lake/"))
    assert apply_lifecycle(store, document) is True
    apply_lifecycle(store, document)  # again: same state (moto drops size filters, so it re-sends)
    rules = {r["ID"]: r for r in lifecycle_rules(store)}
    assert set(rules) == {"someone-else"} | {r["ID"] for r in document["Rules"]}
    assert [t["StorageClass"] for t in rules["fabtier-raw-archive"]["Transitions"]] == ["GLACIER", "DEEP_ARCHIVE"]
    assert rules["fabtier-raw-expire"]["Expiration"]["Days"] == 2555
    assert rules["fabtier-alerts-expire"]["Filter"] == {"Prefix": "lake/alerts/"}


def test_rules_of_an_earlier_version_are_replaced(s3_bucket):
    # The single rule pair of earlier versions covered the whole prefix (alerts, context and
    # aggregates went to Deep Archive with the raw files): it must not survive an update.
    endpoint, bucket = s3_bucket
    store = S3Store(bucket, "lake", endpoint_url=endpoint)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "fabtier-archive", "Status": "Enabled", "Filter": {"Prefix": "lake/"},
         "Transitions": [{"Days": 90, "StorageClass": "GLACIER"}]},
        {"ID": "fabtier-expire", "Status": "Enabled", "Filter": {"Prefix": "lake/"}, "Expiration": {"Days": 2555}}]})
    apply_lifecycle(store, policy.s3_document(policy.policy_from_settings(lifecycle(), prefix="lake/")))
    assert {_prefix(r) for r in lifecycle_rules(store)} == {f"lake/{k}/" for k in ("raw", *READABLE)}
