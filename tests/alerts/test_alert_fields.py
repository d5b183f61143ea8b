"""Alert fields agree between the MQTT/webhook/SNS payload and the SQL `alerts` view (issue 15,
finding 10): no note is null everywhere (old lake files that stored '' too), `step` only for
recipe rules, and a numeric `seq` column that sorts as a number."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from alerts.engine import AlertEngine
from alerts.lotcontext import LotContext
from alerts.recipes import parse_book
from alerts.service import events_from_table
from alerts.sinks import alert_payload
from analytics.session import SqlSources, run_sql
from core.records import AlertEvent
from core.settings import AlertRule
from ingest.codec import ContextEvent
from lifecycle.audit import AUDIT_SCHEMA
from tiers.keys import SensorKeys
from tiers.unsealed import (
    ALERTS_SCHEMA,
    CONTEXT_SCHEMA,
    QUARANTINE_SCHEMA,
    READINGS_SCHEMA,
    alerts_table,
)

T0 = 1_764_000_000_000

CONTRACT_COLUMNS = ["machine", "sensor", "ts", "value", "kind", "threshold", "rule", "state", "raised_at"]
EXTENSION_COLUMNS = ["id", "flapping", "note", "lot", "wafer", "recipe", "recipe_version", "step"]


def event(seq: int, state: str = "raised", note: str = "", writer: str = "w0") -> AlertEvent:
    return AlertEvent(seq=seq, writer=writer, machine="etch-01", sensor="ch1/temp", ts=T0 + seq, value=85.0,
                      kind="high", threshold=80.0, rule="overtemp", state=state, raised_at=T0 + seq + 1,
                      note=note)


def old_lake_file(tmp_path, events: list[AlertEvent]) -> ds.Dataset:
    """An alerts file as the lake stored it before this change: '' for no note."""
    table = pa.Table.from_pydict({name: [getattr(e, name) for e in events] for name in ALERTS_SCHEMA.names},
                                 schema=ALERTS_SCHEMA)
    assert table.column("note").null_count == 0  # '' as stored then
    path = tmp_path / "alerts-old.parquet"
    pq.write_table(table, path)
    return ds.dataset([str(path)], format="parquet", schema=ALERTS_SCHEMA)


def sources(cold_alerts: ds.Dataset | None = None, hot_alerts: pa.Table | None = None) -> SqlSources:
    empty = lambda schema: ds.dataset(schema.empty_table())  # noqa: E731
    return SqlSources(
        cold_raw=empty(READINGS_SCHEMA), cold_quarantine=empty(QUARANTINE_SCHEMA), cold_context=empty(CONTEXT_SCHEMA),
        hot_fresh=READINGS_SCHEMA.empty_table(), hot_late=READINGS_SCHEMA.empty_table(),
        hot_quarantine=QUARANTINE_SCHEMA.empty_table(), hot_context=CONTEXT_SCHEMA.empty_table(),
        audit=AUDIT_SCHEMA.empty_table(), cold_alerts=cold_alerts, hot_alerts=hot_alerts)


def test_no_note_is_null_in_the_payload_and_in_sql_also_for_old_lake_files(tmp_path):
    hot = [event(3), event(4, "cleared", note="stable again: inside for 300 s after flapping")]
    cold = [event(1), event(2, "cleared")]
    src = sources(cold_alerts=old_lake_file(tmp_path, cold), hot_alerts=alerts_table(hot))
    rows = run_sql(src, "SELECT id, note FROM alerts ORDER BY ts").to_pylist()
    assert rows == [{"id": "w0:1", "note": None}, {"id": "w0:2", "note": None}, {"id": "w0:3", "note": None},
                    {"id": "w0:4", "note": "stable again: inside for 300 s after flapping"}]
    assert [alert_payload(e)["note"] for e in cold + hot] == [r["note"] for r in rows]
    # Read back from the table (a restart rebuilds state and backlog so), each event is the one made.
    assert events_from_table(alerts_table(hot)) == hot


def test_step_is_filled_for_recipe_rules_only():
    book = parse_book({"recipes": [{"name": "ETCH-A", "version": "1", "effective": T0 - 86_400_000, "steps": [
        {"name": "main-etch", "duration": "60s", "limits": {"temp": [60.0, 3.0]}}]}]})
    lots = LotContext()
    lots.add(ContextEvent(ts=T0, machine="etch-01", event="start", lot="L1", wafer="W01", recipe="ETCH-A",
                          recipe_version="1"))
    rules = [AlertRule(name="overtemp", sensor="*/ch*/temp", high=80.0),
             AlertRule(name="window", sensor="*", recipe=True)]
    eng = AlertEngine(rules, keys=SensorKeys(), lots=lots, book=book)
    key = eng.keys.id_of("etch-01", "ch1/temp")
    events = eng.evaluate("etch-01", np.array([key], np.int32), np.array([T0 + 5000]), np.array([99.0]), T0 + 6000)
    got = {e.rule: (e.lot, e.recipe, e.recipe_version, e.step) for e in events}
    # Both carry the lot the machine ran; only the recipe rule was judged by a step's limits.
    assert got == {"overtemp": ("L1", "ETCH-A", "1", None), "window": ("L1", "ETCH-A", "1", "main-etch")}
    assert {e.rule: alert_payload(e)["step"] for e in events} == {"overtemp": None, "window": "main-etch"}
    rows = run_sql(sources(hot_alerts=alerts_table(events)), "SELECT rule, step FROM alerts ORDER BY rule")
    assert rows.to_pylist() == [{"rule": "overtemp", "step": None}, {"rule": "window", "step": "main-etch"}]


def test_seq_is_a_bigint_extension_column_that_sorts_as_a_number(tmp_path):
    cold = [event(1), event(2, "cleared"), event(9)]
    hot = [event(10, "cleared"), event(3, writer="w1")]
    src = sources(cold_alerts=old_lake_file(tmp_path, cold), hot_alerts=alerts_table(hot))
    described = run_sql(src, "DESCRIBE alerts").to_pylist()
    # The contract's columns keep their names and order; the extensions follow, seq last.
    assert [r["column_name"] for r in described] == CONTRACT_COLUMNS + EXTENSION_COLUMNS + ["seq"]
    assert described[-1]["column_type"] == "BIGINT"
    rows = run_sql(src, "SELECT id, seq FROM alerts WHERE id LIKE 'w0:%' ORDER BY seq").to_pylist()
    assert rows == [{"id": "w0:1", "seq": 1}, {"id": "w0:2", "seq": 2}, {"id": "w0:9", "seq": 9},
                    {"id": "w0:10", "seq": 10}]
    assert run_sql(src, "SELECT id FROM alerts ORDER BY id").column("id").to_pylist()[:2] == ["w0:1", "w0:10"]
