"""A statement that cannot see the unsealed readings is handed none: its snapshot does not build
the hot tier's tables in the ingest process (issue 13), and its answer is the same."""

import json

import pytest

from analytics.bounds import hot_records_read, reads_hot_readings
from analytics.session import run_sql
from fabtier.runner import Instance
from tests.conftest import make_settings, wait_for
from tiers.unsealed import RECORD_KINDS


@pytest.mark.parametrize("sql, reads", [
    ("SELECT count(*) FROM readings", True),
    ("SELECT * FROM alerts WHERE machine = 'm'", False),
    ("SELECT * FROM readings_1m", False),
    ("SELECT * FROM lot_runs JOIN quarantine ON true", False),
    ("SELECT * FROM alerts WHERE ts > (SELECT max(ts) FROM readings)", True),
    ("WITH r AS (SELECT * FROM late_new) SELECT count(*) FROM r", True),
    ("SELECT * FROM hot_fresh", True),
    ("SELECT * FROM query_table('readings')", True),  # a table function may name any view
    ("SELEC nonsense", True),  # not parsed: assume it may
])
def test_which_statements_can_see_the_unsealed_readings(sql, reads):
    assert reads_hot_readings(sql) is reads


@pytest.mark.parametrize("sql, kinds", [
    ("SELECT count(*) FROM readings", set()),
    ("SELECT * FROM quarantine", {"quarantine"}),
    ("SELECT * FROM lot_runs r JOIN alerts a ON a.machine = r.machine", {"context", "alerts"}),
    ("SELECT * FROM lot_events", {"context"}),
    ("SELECT * FROM hot_alerts", {"alerts"}),
    ("SELECT * FROM query_table('quarantine')", {"quarantine", "context", "alerts"}),
    ("SELEC nonsense", {"quarantine", "context", "alerts"}),
])
def test_which_unsealed_records_a_statement_can_see(sql, kinds):
    assert hot_records_read(sql) == kinds


def test_every_kind_of_unsealed_record_is_known_to_the_statement_check():
    """A statement that may see anything gets every kind the snapshot builds
    (tiers.unsealed.RECORD_KINDS): a kind added there without its views in
    analytics.bounds would be left out of every statement's snapshot."""
    assert hot_records_read("SELECT * FROM query_table('quarantine')") == RECORD_KINDS


def test_a_statement_sees_the_unsealed_records_it_names_and_builds_no_others(tmp_path, broker):
    instance = Instance(make_settings(tmp_path, broker)).start()
    try:
        pipeline = instance.pipeline
        now = pipeline.clock.now_ms()
        pipeline.process([("fab/etch-01", b"not json", 0, 0),
                          ("fab-ctx/etch-01", json.dumps({"ts": now - 1000, "event": "start", "lot": "L1",
                                                          "wafer": "W1", "recipe": "R"}).encode(), 0, 0)])
        wait_for(lambda: pipeline.metrics.quarantined == 1 and pipeline.metrics.context_events == 1,
                 what="the records unsealed")
        for sql, column in (("SELECT count(*) AS n FROM quarantine", "n"), ("SELECT count(*) AS n FROM lot_events", "n")):
            assert run_sql(pipeline.sql_sources(sql), sql).column(column)[0].as_py() == 1
        sources = pipeline.sql_sources("SELECT count(*) FROM readings")
        assert sources.hot_quarantine.num_rows == 0 and sources.hot_context.num_rows == 0
        assert pipeline.sql_sources().hot_quarantine.num_rows == 1  # everything, asked for no statement
    finally:
        instance.stop()


def test_a_statement_without_readings_leaves_the_hot_tables_unbuilt(tmp_path, broker):
    instance = Instance(make_settings(tmp_path, broker)).start()
    try:
        pipeline = instance.pipeline
        now = pipeline.clock.now_ms()
        pipeline.process([("fab/etch-01", json.dumps({"ts": [now - 2000, now - 1000], "sensor": ["a", "a"],
                                                      "v": [1.0, 2.0]}).encode(), 0, 0)])
        wait_for(lambda: pipeline.unsealed.rows == 2, what="the readings unsealed")
        built = []
        plan_view = pipeline.unsealed.plan_view
        pipeline.unsealed.plan_view = lambda segments, **kw: built.append(kw) or plan_view(segments, **kw)
        sources = pipeline.sql_sources("SELECT count(*) AS n FROM quarantine")
        assert built[0]["readings"] is False and sources.hot_fresh.num_rows == 0
        assert run_sql(sources, "SELECT count(*) AS n FROM quarantine").column("n")[0].as_py() == 0
        sql = "SELECT count(*) AS n FROM readings"
        sources = pipeline.sql_sources(sql)
        assert built[-1]["readings"] is True and run_sql(sources, sql).column("n")[0].as_py() == 2
    finally:
        instance.stop()


@pytest.mark.parametrize("sql, bounded", [
    ("SELECT count(*) FROM readings WHERE ts > now() - INTERVAL 1 MINUTE", True),
    ("SELECT count(*) FROM readings", False),
    # The hot tables by their own names hold more than the views show: never pruned.
    ("SELECT count(*) FROM readings WHERE ts > now() - INTERVAL 1 MINUTE "
     "UNION ALL SELECT count(*) FROM hot_fresh", False),
])
def test_the_hot_tier_is_pruned_by_a_statements_time_bounds_as_the_lake_is(tmp_path, broker, sql, bounded):
    instance = Instance(make_settings(tmp_path, broker)).start()
    try:
        pipeline = instance.pipeline
        now = pipeline.clock.now_ms()
        for first in (now - 10 * 60_000, now - 5_000):  # ten minutes ago, then now: two batches
            pipeline.process([("fab/etch-01", json.dumps({"ts": list(range(first, first + 100)), "sensor": ["a"] * 100,
                                                          "v": [1.0] * 100}).encode(), 0, 0)])
            wait_for(lambda first=first: pipeline.unsealed.rows == (100 if first < now - 60_000 else 200),
                     what="the readings unsealed")
            pipeline.sql_sources("SELECT count(*) FROM readings")  # the view grows a batch
        sources = pipeline.sql_sources(sql)
        handed = sources.hot_fresh.num_rows + sources.hot_late.num_rows
        assert handed == (100 if bounded else 200)
        answer = run_sql(sources, sql).column(0).to_pylist()
        assert answer[0] == (100 if "INTERVAL" in sql else 200)
    finally:
        instance.stop()


def test_a_statement_while_the_log_opens_its_next_segment_reads_no_segment_from_disk(tmp_path, broker, monkeypatch):
    """The ingest thread rotates the log outside the ingest lock: the next segment's file is
    on disk before it is the active one. A statement then is no reason to read it as an
    earlier run's leftover (and to recast every unsealed row to plain strings)."""
    from fabtier import reads
    from ingest.walformat import SEGMENT_MAGIC

    instance = Instance(make_settings(tmp_path, broker)).start()
    try:
        pipeline = instance.pipeline
        now = pipeline.clock.now_ms()
        pipeline.process([("fab/etch-01", json.dumps({"ts": [now - 2000, now - 1000], "sensor": ["a", "b"],
                                                      "v": [1.0, 2.0]}).encode(), 0, 0)])
        wait_for(lambda: pipeline.unsealed.rows == 2, what="the readings unsealed")
        opening = pipeline.wal.path(pipeline.wal.active + 1)
        opening.write_bytes(SEGMENT_MAGIC)  # as WriteAheadLog._open leaves it before `active` moves on
        read = []
        monkeypatch.setattr(reads, "read_segment", lambda path: read.append(path) or [])
        sources = pipeline.sql_sources("SELECT count(*) AS n FROM readings")
        assert read == []
        assert sources.hot_fresh.schema.field("machine").type.value_type == "string"  # still the view's own columns
        assert run_sql(sources, "SELECT count(*) AS n FROM readings").column("n")[0].as_py() == 2
        opening.unlink()
    finally:
        instance.stop()
