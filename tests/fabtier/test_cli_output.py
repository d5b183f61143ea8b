"""The command line as a person meets it: exit codes, help texts, the tiers table."""

from core.settings import Settings
from fabtier.cli import tiers_table
from ingest.walformat import SEGMENT_MAGIC
from tests.conftest import fabtier_cli, make_settings, write_config


def test_a_failed_tiering_job_makes_lifecycle_run_exit_1(tmp_path):
    settings: Settings = make_settings(tmp_path, None)
    config = write_config(settings, tmp_path / "fabtier.toml")
    # Two damaged Parquet files of a settled hour, of segments sealed long ago (the log is at
    # segment 100): compaction cannot read them and fails.
    (settings.data_dir / "wal").mkdir(parents=True)
    (settings.data_dir / "wal" / f"{100:012d}.wal").write_bytes(SEGMENT_MAGIC)
    hour = settings.data_dir / "lake" / "raw" / "date=2025-01-01" / "hour=00"
    hour.mkdir(parents=True)
    for segment in (1, 2):
        (hour / f"w0-{segment:012d}.f64.parquet").write_bytes(b"not parquet at all")
    result = fabtier_cli("lifecycle", "run", "--config", str(config), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"error"' in result.stdout
    assert "tiering job(s) failed: compact" in result.stderr


def test_simulate_help_shows_the_defaults():
    text = " ".join(fabtier_cli("simulate", "--help").stdout.split())
    assert "--rate-hz RATE_HZ readings per second of each sensor (default: 10.0)" in text
    assert "--broker BROKER the broker to publish to (default: mqtt://127.0.0.1:1883)" in text


def test_the_tiers_table_groups_bytes_and_rounds_costs():
    result = {"tiers": [{"tier": "cold raw", "storage_class": "local-disk", "rows": 1234567, "bytes": 9876543210,
                         "oldest_ms": 0, "newest_ms": 1000, "usd_per_month": 5.960464477539063e-10},
                        {"tier": "hot ring", "storage_class": "memory", "rows": 10, "bytes": 160,
                         "oldest_ms": None, "newest_ms": None, "usd_per_month": 12.3456789}],
              "total_usd_per_month": 12.3456789, "prices_as_of": "2025 (us-east-1 list prices)"}
    text = tiers_table(result)
    assert "1,234,567" in text and "9,876,543,210" in text
    assert "< 0.0001" in text and "12.3457" in text and "e-10" not in text
    assert text.endswith("estimated total: 12.3457 USD a month; prices: 2025 (us-east-1 list prices)")
    assert "))" not in text
