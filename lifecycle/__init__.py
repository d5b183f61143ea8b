"""Lifecycle: the scheduled, idempotent, audited jobs that move data between tiers."""
