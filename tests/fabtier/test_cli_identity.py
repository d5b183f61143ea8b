"""The command line reads the data directory it was given, whichever instance answers on the
configured API port (issue 15, finding 1)."""

import dataclasses
import json
import time

from fabtier.pipeline import Pipeline
from fabtier.runner import Instance
from tests.conftest import fabtier_cli, make_settings, write_config


def _offline_readings(settings, n: int) -> None:
    """A data directory with `n` readings sealed into its lake, and no process holding it."""
    pipeline = Pipeline(settings)
    pipeline.open(warm=False)
    now = int(time.time() * 1000)
    pipeline.process([("fab/etch-01", json.dumps({"ts": [now - 1000 - i for i in range(n)], "sensor": ["a"] * n,
                                                  "v": [1.0] * n}).encode(), 0, 0)])
    assert pipeline.wal is not None
    pipeline.wal.commit()
    pipeline.seal()
    pipeline.close_offline()


def test_sql_and_lifecycle_read_the_configured_data_directory_not_another_instances(broker, tmp_path):
    running = make_settings(tmp_path / "b", broker)  # instance B, empty, on port P
    mine = dataclasses.replace(make_settings(tmp_path / "a", broker), api=running.api)  # A: same port P
    _offline_readings(mine, 7)
    config = write_config(mine, tmp_path / "a.toml")
    instance = Instance(running).start()
    try:
        result = fabtier_cli("sql", "--config", str(config), "SELECT count(*) AS n FROM readings", "--format", "json")
        assert json.loads(result.stdout) == [{"n": 7}]
        assert "serves another data directory" in result.stderr
        lifecycle = fabtier_cli("lifecycle", "run", "--config", str(config))
        assert "serves another data directory" in lifecycle.stderr
        # The jobs ran on A's data directory, none on B's.
        assert '"trigger":"manual"' in (mine.data_dir / "lifecycle" / "runs.jsonl").read_text()
        b_runs = running.data_dir / "lifecycle" / "runs.jsonl"
        assert not b_runs.exists() or '"trigger":"manual"' not in b_runs.read_text()
        # B itself is still reached through its own configuration.
        own = write_config(running, tmp_path / "b.toml")
        result = fabtier_cli("sql", "--config", str(own), "SELECT count(*) AS n FROM readings", "--format", "json")
        assert json.loads(result.stdout) == [{"n": 0}] and "another data directory" not in result.stderr
    finally:
        instance.stop()
