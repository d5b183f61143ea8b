"""The cold tier's scheduled jobs: compaction, the lifecycle (archive and expiry), the Glue
catalog. Each is idempotent, takes `now` from the pipeline's clock (or the caller), and
runs under the pipeline's seal lock, so that it never races the seal job over this
writer's files.

Moves follow copy, verify, audit, then delete: `ColdLake.compact` writes and verifies the
merged set, the audit trail records it (fsynced), and only then are the sources deleted. A
crash at any point leaves the lake readable exactly once (tiers.layout) and the next run
finishes the work. On a local store, a lifecycle transition is recorded (the store's
storage-class record) and audited; an expiry is audited, then deleted. On S3 the bucket's
lifecycle configuration does both, and the job only keeps that configuration in sync.
"""

from __future__ import annotations

import logging

import pyarrow.parquet as pq

from lifecycle import glue, policy
from lifecycle.host import JobHost
from tiers import catalog, compaction
from tiers.cold import Move
from tiers.s3bucket import apply_lifecycle, aws_errors
from tiers.store import S3Store

log = logging.getLogger("fabtier.lifecycle")

COMPACT = "compact"
LIFECYCLE = "lifecycle"
GLUE = "glue"


def _now(pipeline: JobHost, now_ms: int | None) -> int:
    return pipeline.clock.now_ms() if now_ms is None else now_ms


def compact(pipeline: JobHost, now_ms: int | None = None, *, at_ms: int | None = None) -> dict:
    """Merge settled hours' small files of this writer; delete leftovers of earlier runs.
    `now_ms`: the time hours settle by; `at_ms`: the time the audit trail records."""
    settings, lake = pipeline.settings, pipeline.lake
    now = _now(pipeline, now_ms)
    at = _now(pipeline, at_ms)
    with pipeline.seal_lock:
        hidden = pipeline.hidden_segments()
        plan = compaction.plan(lake.lake_files("raw"), writer=lake.writer_id, hidden_segments=hidden, now_ms=now,
                               settle_ms=int(settings.cold.compact_after * 1000),
                               target_bytes=settings.cold.compact_target)
        # Leftovers hold no reading a reader needs (their rows are in a complete set, or
        # they are parts of a set whose writing was cut short): deleting them is safe.
        lake.delete_files(plan.garbage)
        rows = files = 0
        for task in plan.tasks:
            moves = lake.compact(task, uniform=bool(settings.glue.database))
            pipeline.audit.record(COMPACT, moves, at)
            lake.delete_files(task.sources)
            rows += sum(m.rows for m in moves)
            files += len(task.sources)
    if plan.tasks:
        log.info("compacted %d file(s) into %d set(s), %d readings", files, len(plan.tasks), rows)
    return {"job": COMPACT, "sets": len(plan.tasks), "files_merged": files, "rows": rows,
            "leftovers_deleted": len(plan.garbage)}


def lake_policy(pipeline: JobHost) -> policy.Policy:
    store = catalog.unwrap(pipeline.lake.store)
    prefix = f"{store.prefix}/" if isinstance(store, S3Store) and store.prefix else ""
    return policy.policy_from_settings(pipeline.settings.lifecycle, prefix=prefix)


def _rows(pipeline: JobHost, key: str) -> int:
    if not key.endswith(".parquet"):
        return 0
    fs, root = pipeline.lake.store.arrow_filesystem()
    try:
        return pq.read_metadata(f"{root}/{key}", filesystem=fs).num_rows
    except OSError:
        return 0


def apply_lifecycle_policy(pipeline: JobHost, now_ms: int | None = None, *, at_ms: int | None = None) -> dict:
    """Archive and expire by age: S3 does it from the bucket's configuration (kept in sync
    here); on a local store fabtier evaluates the same rules and records the classes."""
    store = pipeline.lake.store
    rules = lake_policy(pipeline)
    s3 = catalog.unwrap(store)
    if isinstance(s3, S3Store):
        with aws_errors("keeping the bucket's lifecycle configuration"):
            changed = apply_lifecycle(s3, policy.s3_document(rules))
        return {"job": LIFECYCLE, "store": "s3", "configuration_updated": changed}
    now, at = _now(pipeline, now_ms), _now(pipeline, at_ms)
    transitions = expiries = 0
    with pipeline.seal_lock:
        objects = store.objects("")
        for action in policy.evaluate(rules, objects, now):
            size = next(o.size for o in objects if o.key == action.key)
            where = f"{store.url}/{action.key}"
            if action.kind == "transition":
                if action.to_class is None:  # evaluate() names the class of every transition
                    raise ValueError(f"transition of {action.key} without a storage class")
                store.set_storage_class(action.key, action.to_class)
                pipeline.audit.record("transition", [Move(
                    "transition", f"{where} ({action.from_class})", f"{where} ({action.to_class})",
                    _rows(pipeline, action.key), size, "")], at)
                transitions += 1
            else:
                # The record is durable before the data goes.
                pipeline.audit.record("expire", [Move("expire", where, "(expired)", _rows(pipeline, action.key),
                                                      size, "")], at)
                store.delete(action.key)
                expiries += 1
        catalog.flush(store)
    if transitions or expiries:
        log.info("lifecycle: %d transition(s), %d expiry(ies)", transitions, expiries)
    return {"job": LIFECYCLE, "store": "local", "transitions": transitions, "expiries": expiries}


def sync_glue(pipeline: JobHost) -> dict:
    """Register the lake's hours in the Glue catalog (when `[glue] database` is set)."""
    catalog = glue.catalog_for(pipeline.settings, pipeline.lake.store)
    if catalog is None:
        return {"job": GLUE, "configured": False}
    with aws_errors("updating the Glue catalog"):
        done = catalog.ensure_table()
        with pipeline.seal_lock:
            hidden = pipeline.hidden_segments()
            files = pipeline.lake.visible_files("raw", hidden)
        plan = glue.plan_partitions(files, catalog.registered())
        catalog.apply(plan)
    if plan.mixed:
        log.info("%d hour(s) mix DOUBLE and DECIMAL files; Athena sees them after compaction", len(plan.mixed))
    return {"job": GLUE, "configured": True, "changes": done, "created": len(plan.create),
            "updated": len(plan.update), "deleted": len(plan.delete), "mixed": len(plan.mixed)}
