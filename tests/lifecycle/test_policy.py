"""The lifecycle document per configuration, S3's rules, and the local evaluation."""

import math

import boto3
import pytest

from core.errors import ConfigError
from core.records import ObjectInfo as ObjectState
from fabtier.config import settings_from_mapping
from lifecycle import policy
from tiers.s3bucket import apply_lifecycle, lifecycle_rules
from tiers.store import S3Store

DAY_MS = 86_400_000


def lifecycle(**values):
    return settings_from_mapping({"lifecycle": values}, env={}).lifecycle


def test_default_document_archives_at_90_and_365_days_and_expires_at_2555():
    document = policy.s3_document(policy.policy_from_settings(lifecycle(), prefix="lake/"))
    archive, expire = document["Rules"]
    assert archive["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER"},
                                      {"Days": 365, "StorageClass": "DEEP_ARCHIVE"}]
    assert archive["Filter"]["And"]["Prefix"] == "lake/"
    # above S3's 128 KiB default and above the size where a transition pays for itself
    assert archive["Filter"]["And"]["ObjectSizeGreaterThan"] > 128 * 1024
    assert expire == {"ID": "fabtier-expire", "Status": "Enabled", "Filter": {"Prefix": "lake/"},
                      "Expiration": {"Days": 2555}}
    assert policy.validate_s3_document(document) == []


def test_short_ages_round_up_to_whole_days_on_s3():
    rules = policy.policy_from_settings(lifecycle(glacier_after="36h", deep_archive_after="200d",
                                                  expire_after="400d", cost_guard=False), prefix="")
    archive, expire = policy.s3_document(rules)["Rules"]
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
    (archive, _) = rules.rules
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
    threshold = document["Rules"][0]["Filter"]["And"]["ObjectSizeGreaterThan"]
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
    assert set(rules) == {"someone-else", "fabtier-archive", "fabtier-expire"}
    assert [t["StorageClass"] for t in rules["fabtier-archive"]["Transitions"]] == ["GLACIER", "DEEP_ARCHIVE"]
    assert rules["fabtier-expire"]["Expiration"]["Days"] == 2555
