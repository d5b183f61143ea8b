"""Alert acknowledgement (issue 12): `POST /alerts/{id}/ack` keeps who, when and why durably
(an fsynced append to {data_dir}/alerts/acks.jsonl), `GET /alerts` lists open or recent
alerts with their acknowledgements, and SQL shows them in `alert_acks`, across a restart
and offline."""

import dataclasses
import json

import pytest

from alerts import acks
from core.settings import Secret
from fabtier.runner import Instance
from tests.conftest import fabtier_cli, make_settings, write_config
from tests.fabtier.test_api_requests import call as api_call

TOKEN = "ack-token"
RULE = {"name": "chamber-overtemp", "sensor": "*/ch*/temp", "high": 80.0, "low": 10.0, "hysteresis": 2.0}


def call(url: str, method: str = "GET", body: object = None, token: str | None = TOKEN,
         raw: bytes | None = None, content_type: str = "application/json") -> tuple[int, dict, object]:
    """tests.fabtier.test_api_requests.call with a JSON body (or `raw` bytes)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return api_call(url, method, data, token, content_type)


def _publish(instance: Instance, machine: str, values: list[float], ts0: int) -> None:
    body = {"ts": [ts0 + 10 * i for i in range(len(values))], "sensor": ["ch1/temp"] * len(values), "v": values}
    instance.pipeline.process([(f"fab/{machine}", json.dumps(body).encode(), 0, 0)])


@pytest.fixture
def settings(tmp_path, broker):
    settings = make_settings(tmp_path, broker, alerts={"rules": [RULE]})
    return dataclasses.replace(settings, api=dataclasses.replace(settings.api, token=Secret(TOKEN)))


def _sql(instance: Instance, statement: str) -> list[dict]:
    status, _, rows = call(f"{instance.api_url}/sql", "POST", raw=statement.encode(), content_type="text/plain")
    assert status == 200, rows
    assert isinstance(rows, list)
    return rows


def test_acknowledge_list_and_query_alerts_across_a_restart(settings, tmp_path):
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        _publish(instance, "etch-01", [50, 85, 90, 77], now - 5000)  # raised, then cleared
        _publish(instance, "etch-02", [50, 95], now - 4000)  # raised, still open
        url = instance.api_url

        status, _, open_alerts = call(f"{url}/alerts")
        assert status == 200 and isinstance(open_alerts, list)
        assert [(a["machine"], a["state"], a["value"], a["acked"], a["acks"]) for a in open_alerts] == [
            ("etch-02", "raised", 95, False, [])]
        alert = open_alerts[0]
        assert alert["ts"] == now - 3990 and alert["rule"] == "chamber-overtemp" and alert["kind"] == "high"
        status, _, recent = call(f"{url}/alerts?state=recent")
        assert [(a["machine"], a["state"]) for a in recent] == [
            ("etch-02", "raised"), ("etch-01", "cleared"), ("etch-01", "raised")]
        assert [a["state"] for a in call(f"{url}/alerts?state=recent&machine=etch-01")[2]] == ["cleared", "raised"]
        assert call(f"{url}/alerts?state=recent&rule=other")[2] == []
        assert len(call(f"{url}/alerts?state=recent&limit=1")[2]) == 1
        assert call(f"{url}/alerts?state=recent&machine=it's")[2] == []  # a quote is only a character

        status, _, ack = call(f"{url}/alerts/{alert['id']}/ack", "POST", {"who": "jane", "note": "chiller reset"})
        assert status == 200, ack
        assert ack == {"alert_id": alert["id"], "who": "jane", "at": ack["at"], "note": "chiller reset"}
        assert now - 60_000 < ack["at"] < now + 60_000
        status, _, second = call(f"{url}/alerts/{alert['id']}/ack", "POST", {"who": "joe"})
        assert status == 200 and second["note"] == ""

        listed = call(f"{url}/alerts")[2][0]
        assert listed["acked"] is True and [(a["who"], a["note"]) for a in listed["acks"]] == [
            ("jane", "chiller reset"), ("joe", "")]
        rows = _sql(instance, 'SELECT alert_id, who, note, epoch_ms("at") AS ms FROM alert_acks ORDER BY ms, who')
        assert [(r["alert_id"], r["who"], r["note"]) for r in rows] == [
            (alert["id"], "jane", "chiller reset"), (alert["id"], "joe", "")]
        assert rows[0]["ms"] == ack["at"]
        assert _sql(instance, "SELECT a.machine FROM alerts a JOIN alert_acks k ON k.alert_id = a.id "
                              "WHERE k.who = 'jane'") == [{"machine": "etch-02"}]
        assert (settings.data_dir / "alerts" / "acks.jsonl").read_text().count("\n") == 2
    finally:
        instance.stop()

    config = write_config(settings, tmp_path / "fabtier.toml")
    offline = json.loads(fabtier_cli("sql", "--config", str(config), "SELECT who FROM alert_acks ORDER BY who",
                                     "--format", "json").stdout)
    assert offline == [{"who": "jane"}, {"who": "joe"}]

    instance = Instance(settings).start()  # the alerts are in the lake now, the acks still beside them
    try:
        listed = call(f"{instance.api_url}/alerts")[2]
        assert [(a["id"], [k["who"] for k in a["acks"]]) for a in listed] == [(alert["id"], ["jane", "joe"])]
    finally:
        instance.stop()


def test_what_an_acknowledgement_refuses(settings):
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        _publish(instance, "etch-02", [50, 95], now - 4000)
        url = instance.api_url
        (alert,) = call(f"{url}/alerts")[2]
        ack_url = f"{url}/alerts/{alert['id']}/ack"
        for body, field in (({"note": "x"}, "who"), ({"who": 5}, "who"), ({"who": "   "}, "who"),
                            ({"who": "a", "note": 7}, "note"), ({"who": "a", "by": "b"}, "by"),
                            ({"who": "a" * 201}, "who"), ({"who": "a\x00"}, "who"), ([], "body")):
            status, _, answer = call(ack_url, "POST", body)
            assert (status, answer["parameter"]) == (400, field), (body, answer)
            assert field in answer["error"]
        status, _, answer = call(ack_url, "POST", raw=b"{not json")
        assert (status, answer["parameter"]) == (400, "body")
        for unknown in ("w0:999999", "w9:1", "nope", "w0:1:2"):
            status, _, answer = call(f"{url}/alerts/{unknown}/ack", "POST", {"who": "jane"})
            assert status == 404 and unknown in answer["error"], (unknown, answer)
        status, headers, _ = call(ack_url, "POST", {"who": "jane"}, token=None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert call(f"{url}/alerts", token="wrong")[0] == 401
        status, headers, _ = call(ack_url, "GET")
        assert status == 405 and headers["Allow"] == "POST"
        for query, param in (("state=closed", "state"), ("limit=0", "limit"), ("limit=x", "limit"),
                             ("machine=%00", "machine"), ("state=open&state=recent", "state")):
            status, _, answer = call(f"{url}/alerts?{query}")
            assert (status, answer["parameter"]) == (400, param), (query, answer)
        assert not (settings.data_dir / "alerts" / "acks.jsonl").exists()
    finally:
        instance.stop()


# ---- the pure parts and the file -----------------------------------------------------------
def test_check_request_names_the_field():
    assert acks.check_request({"who": "jane", "note": "line 1\nline 2\t."}) == ("jane", "line 1\nline 2\t.")
    assert acks.check_request({"who": "jane"}) == ("jane", "")
    for document, field in (({}, "who"), ({"who": None}, "who"), ({"who": "x", "note": None}, "note"),
                            ({"who": "x", "note": "n" * 2001}, "note"), ("jane", "body"), (None, "body")):
        with pytest.raises(acks.AckError) as caught:
            acks.check_request(document)
        assert caught.value.field == field


def test_split_alert_id():
    assert acks.split_alert_id("w0:17") == ("w0", 17)
    assert acks.split_alert_id("ingest-b_2:0") == ("ingest-b_2", 0)
    for bad in ("w0", ":17", "w0:", "w0:x", "w 0:1", "w0:1:2", "w'0:1"):
        assert acks.split_alert_id(bad) is None, bad


def test_the_file_keeps_every_whole_line(tmp_path):
    log = acks.AckLog.of(tmp_path)
    assert log.acks() == [] and log.table().num_rows == 0
    first = acks.Ack("w0:1", "jane", 1_764_000_000_000, "reset")
    log.append(first)
    with open(log.path, "ab") as handle:
        handle.write(b'{"alert_id": "w0:2", "who": "to')  # torn by a crash: never answered
    second = acks.Ack("w0:3", "joe", 1_764_000_000_500, "")
    log.append(second)
    assert log.acks() == [first, second]
    assert acks.AckLog.of(tmp_path).table().to_pylist()[1]["who"] == "joe"
    assert acks.decode(acks.encode(first)) == [first]
