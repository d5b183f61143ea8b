"""Acknowledgements the dashboard keeps for an instance without an ack route."""

from __future__ import annotations

from dashboard.acks import AckStore


def test_an_acknowledgement_is_durable_the_first_one_wins_and_a_torn_line_is_skipped(tmp_path):
    path = tmp_path / "dashboard" / "acks.jsonl"
    store = AckStore(path)
    first = store.add("w0:1", who="kim", note="checked")
    assert store.add("w0:1", who="lee", note="later") == first
    with open(path, "a", encoding="utf-8") as out:
        out.write('{"id": "w0:2", "who": "to')  # a crash in the middle of a write
    again = AckStore(path)
    assert again.get("w0:1") == first and again.get("w0:2") is None
    alerts = [{"id": "w0:1", "ack": None}, {"id": "w0:3", "ack": None}, {"id": "w0:1", "ack": {"who": "x"}}]
    again.fill(alerts)
    assert alerts[0]["ack"]["who"] == "kim" and alerts[1]["ack"] is None and alerts[2]["ack"] == {"who": "x"}
