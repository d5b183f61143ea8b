"""Tiers: where readings live (hot ring, unsealed buffer, cold Parquet lake) and their formats."""
