"""`fabtier cold ...`: administration of the cold store (bucket setup, IAM policy, lifecycle
document). Prints JSON; a store that is not S3 gets a clear message where S3 is needed."""

from __future__ import annotations

import json

from core.errors import FabtierError, UserError
from core.settings import Settings
from lifecycle import glue, policy
from tiers import catalog as lake_catalog
from tiers import s3bucket
from tiers.store import S3Store, settings_store


def _s3(settings: Settings, what: str) -> S3Store:
    store = settings_store(settings)
    s3 = lake_catalog.unwrap(store)
    if not isinstance(s3, S3Store):
        raise UserError(f"{what} needs an S3 store; set [cold] store = 's3://bucket/prefix' "
                        f"(the local store {store.url} needs no setup)")
    return s3


def run_cold_command(settings: Settings, args) -> int:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return _run(settings, args)
    except NoCredentialsError:
        raise UserError("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY, or run where an instance role applies") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise FabtierError(f"AWS refused {exc.operation_name}: {error.get('Code')}: {error.get('Message')}") from None
    except BotoCoreError as exc:
        raise FabtierError(f"AWS could not be reached: {exc}") from None


def _run(settings: Settings, args) -> int:
    if args.action == "iam-policy":
        s3 = _s3(settings, "an IAM policy")
        print(json.dumps(s3bucket.iam_policy(
            bucket=s3.bucket, prefix=s3.prefix, region=settings.cold.region, account=args.account,
            glue_database=settings.glue.database, glue_table=settings.glue.table,
            kms_key_arn=settings.cold.kms_key_id if settings.cold.sse == "aws:kms" else ""), indent=2))
        return 0
    store = settings_store(settings)
    base = lake_catalog.unwrap(store)
    prefix = f"{base.prefix}/" if isinstance(base, S3Store) and base.prefix else ""
    rules = policy.policy_from_settings(settings.lifecycle, prefix=prefix)
    if args.action == "lifecycle":
        out: dict[str, object] = {"store": store.url, "kinds": policy.describe(rules), "rules": [
            {"id": r.id, "kind": r.kind, "prefix": r.prefix, "min_size_bytes": r.min_size,
             "transitions": [{"after_s": t.after_s, "storage_class": t.storage_class} for t in r.transitions],
             "expire_after_s": r.expire_after_s} for r in rules.rules]}
        if isinstance(lake_catalog.unwrap(store), S3Store):
            out["s3_document"] = policy.s3_document(rules)
        else:
            out["evaluated_by"] = "fabtier (local store: exact ages, storage classes recorded in the store)"
        print(json.dumps(out, indent=2))
        return 0
    if args.action == "setup":
        s3 = _s3(settings, "setup")
        document = policy.s3_document(rules)  # validated before anything is sent
        done = []
        if s3bucket.ensure_bucket(s3):
            done.append(f"created bucket {s3.bucket}")
        done += s3bucket.secure_bucket(s3, sse=settings.cold.sse, kms_key_id=settings.cold.kms_key_id,
                                       require_tls=True if getattr(args, "require_tls", False) else None)
        if s3bucket.apply_lifecycle(s3, document):
            done.append("lifecycle configuration applied")
        catalog = glue.catalog_for(settings, s3)
        if catalog is not None:
            done += catalog.ensure_table()
        print(json.dumps({"store": s3.url, "done": done}, indent=2))
        return 0
    raise UserError(f"unknown cold action {args.action!r}")
