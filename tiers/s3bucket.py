"""The S3 bucket's own settings: security defaults, the lifecycle configuration, and the
least-privilege IAM policy fabtier needs (printed, never applied by fabtier).

Security defaults (`secure_bucket`): default encryption (SSE-S3, or SSE-KMS with a bucket
key), every kind of public access blocked, ACLs disabled (bucket owner enforced), and a
bucket policy statement that refuses any request not made over TLS. fabtier adds its own
statement and lifecycle rules next to whatever the bucket already has (rules and statements
it does not own are kept), so it can share a bucket.

The TLS statement is left out when fabtier itself reaches the store over plain HTTP (moto's
server, a MinIO without certificates): S3 would then refuse every request of fabtier's, and
each seal would fail with 403. A statement an earlier setup added over HTTP is removed.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from urllib.parse import urlparse

from tiers.store import S3Store, StoreError

log = logging.getLogger("fabtier.cold")

TLS_STATEMENT_ID = "fabtier-deny-insecure-transport"
RULE_PREFIX = "fabtier-"


def _code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


@contextmanager
def aws_errors(what: str):
    """AWS failures as one-line StoreErrors (a FabtierError: exit 1, no traceback)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise StoreError(f"{what}: AWS refused {exc.operation_name}: {error.get('Code')}: "
                         f"{error.get('Message')}") from None
    except BotoCoreError as exc:
        raise StoreError(f"{what}: {exc}") from None


def ensure_bucket(store: S3Store) -> bool:
    """Create the bucket if it does not exist; True if it was created."""
    try:
        store.client.head_bucket(Bucket=store.bucket)
        return False
    except Exception as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    options = {} if store.region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": store.region}}
    store.client.create_bucket(Bucket=store.bucket, **options)
    return True


def endpoint_of(store: S3Store) -> str:
    """The URL boto3 actually sends to (an `endpoint_url`, AWS_ENDPOINT_URL..., else AWS's)."""
    return str(store.client.meta.endpoint_url or store.endpoint_url or "https://s3.amazonaws.com")


def uses_tls(store: S3Store) -> bool:
    return urlparse(endpoint_of(store)).scheme.lower() == "https"


def tls_statement(bucket: str) -> dict:
    return {
        "Sid": TLS_STATEMENT_ID, "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def bucket_policy(store: S3Store) -> dict | None:
    """The bucket's policy document, None when it has none."""
    try:
        return json.loads(store.client.get_bucket_policy(Bucket=store.bucket)["Policy"])
    except Exception as exc:
        if _code(exc) not in ("NoSuchBucketPolicy", "404"):
            raise
        return None


def secure_bucket(store: S3Store, *, sse: str = "AES256", kms_key_id: str = "",
                  require_tls: bool | None = None) -> list[str]:
    """Apply the security defaults; returns what was done, one line each.

    `require_tls`: add the statement refusing requests without TLS; None (the default): only
    when fabtier itself uses TLS to reach the store, since over plain HTTP the statement would
    refuse fabtier's own requests (True adds it anyway, False leaves it out)."""
    client, bucket = store.client, store.bucket
    rule: dict = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": sse}}
    if sse == "aws:kms":
        rule["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] = kms_key_id
        rule["BucketKeyEnabled"] = True  # fewer KMS requests, lower cost
    client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [rule]})
    client.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    client.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
    done = [f"default encryption {sse}", "public access blocked", "ACLs disabled (bucket owner enforced)"]
    endpoint = endpoint_of(store)
    wanted = uses_tls(store) if require_tls is None else require_tls
    policy = bucket_policy(store)
    ours = [s for s in (policy or {}).get("Statement", []) if s.get("Sid") == TLS_STATEMENT_ID]
    if wanted:
        policy = policy or {"Version": "2012-10-17", "Statement": []}
        policy["Statement"] = [s for s in policy.get("Statement", []) if s.get("Sid") != TLS_STATEMENT_ID]
        policy["Statement"].append(tls_statement(bucket))
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        done.append("requests without TLS refused")
        if not uses_tls(store):
            log.warning("the bucket policy now refuses requests without TLS, and fabtier reaches %s over plain "
                        "HTTP: S3 will refuse fabtier's own requests (every seal fails with 403) until the "
                        "endpoint is https:// or `fabtier cold setup` runs without --require-tls", endpoint)
        return done
    log.warning("requests without TLS are NOT refused by the bucket policy of %s: fabtier reaches it over plain "
                "HTTP (%s), and a statement refusing them would refuse fabtier's own requests; use an https:// "
                "endpoint to have it (or `fabtier cold setup --require-tls` to add it anyway)", bucket, endpoint)
    done.append(f"requests without TLS not refused: {endpoint} is plain HTTP (the statement would refuse "
                "fabtier itself)")
    if ours and policy is not None:
        rest = [s for s in policy.get("Statement", []) if s.get("Sid") != TLS_STATEMENT_ID]
        if rest:
            client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({**policy, "Statement": rest}))
        else:  # S3 refuses a policy without statements
            client.delete_bucket_policy(Bucket=bucket)
        log.warning("removed the bucket policy statement %s of an earlier setup from %s: it refused every "
                    "request fabtier makes over plain HTTP (%s)", TLS_STATEMENT_ID, bucket, endpoint)
        done.append(f"removed statement {TLS_STATEMENT_ID}, which refused fabtier's own requests over plain HTTP")
    return done


def lifecycle_rules(store: S3Store) -> list[dict]:
    try:
        return store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]
    except Exception as exc:
        if _code(exc) in ("NoSuchLifecycleConfiguration", "404"):
            return []
        raise
    return []


def apply_lifecycle(store: S3Store, document: dict) -> bool:
    """Make the bucket's fabtier rules those of `document` (a validated document from
    lifecycle.policy.s3_document), keeping rules fabtier does not own; True if it changed."""
    current = lifecycle_rules(store)
    foreign = [r for r in current if not str(r.get("ID", "")).startswith(RULE_PREFIX)]
    ours = sorted((r for r in current if str(r.get("ID", "")).startswith(RULE_PREFIX)), key=lambda r: r["ID"])
    wanted = sorted(document["Rules"], key=lambda r: r["ID"])
    if _normalise(ours) == _normalise(wanted):
        return False
    store.client.put_bucket_lifecycle_configuration(
        Bucket=store.bucket, LifecycleConfiguration={"Rules": foreign + wanted})
    return True


def _normalise(rules: list[dict]) -> str:
    return json.dumps(rules, sort_keys=True, default=str)


def iam_policy(*, bucket: str, prefix: str, region: str = "us-east-1", account: str = "*",
               glue_database: str = "", glue_table: str = "", kms_key_arn: str = "") -> dict:
    """The least-privilege IAM policy for a fabtier process on `s3://bucket/prefix`.

    Objects: read, write, delete and restore under the prefix only; listing: the prefix
    only; bucket: the lifecycle configuration fabtier keeps in sync. Glue: the one database,
    table and its partitions. Setting up the bucket (`fabtier cold setup`) needs more
    (encryption, public access block, policy) and is meant for an administrator."""
    path = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    statements = [
        {"Sid": "FabtierListLake", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [f"{path}*"]}}},
        {"Sid": "FabtierLakeObjects", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:RestoreObject"],
         "Resource": f"arn:aws:s3:::{bucket}/{path}*"},
        {"Sid": "FabtierLifecycle", "Effect": "Allow",
         "Action": ["s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration"],
         "Resource": f"arn:aws:s3:::{bucket}"},
    ]
    if kms_key_arn:
        statements.append({"Sid": "FabtierKms", "Effect": "Allow",
                           "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": kms_key_arn})
    if glue_database:
        base = f"arn:aws:glue:{region}:{account}"
        statements.append({
            "Sid": "FabtierGlueCatalog", "Effect": "Allow",
            "Action": ["glue:GetDatabase", "glue:CreateDatabase", "glue:GetTable", "glue:CreateTable",
                       "glue:UpdateTable", "glue:GetPartitions", "glue:BatchCreatePartition",
                       "glue:BatchUpdatePartition", "glue:BatchDeletePartition"],
            "Resource": [f"{base}:catalog", f"{base}:database/{glue_database}",
                         f"{base}:table/{glue_database}/{glue_table}"]})
    return {"Version": "2012-10-17", "Statement": statements}
