"""Analytics: one read-only DuckDB session with views over every tier."""
