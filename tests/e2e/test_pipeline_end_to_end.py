"""The whole path of a reading: independent publisher -> mosquitto -> fabtier -> SQL -> Parquet."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fabtier.runner import Instance
from tests.conftest import fabtier_cli, make_settings, mosquitto_pub, wait_for, write_config


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _expected_and_messages(now: int):
    """Valid messages (topic, payload) with the readings they carry, and malformed ones."""
    expected: dict[tuple[str, str, int], float] = {}
    singles: list[tuple[str, str]] = []
    for i in range(20):
        ts = now - 60_000 + i * 100
        value = round(20 + i * 0.37, 2)
        expected[("etch-01", "ch1/temp", ts)] = value
        # Every other reading with an ISO-8601 timestamp and a non-UTC offset.
        stamp = str(ts) if i % 2 == 0 else json.dumps(
            dt.datetime.fromtimestamp(ts / 1000, dt.timezone(dt.timedelta(hours=2))).isoformat(timespec="milliseconds"))
        singles.append(("fab/etch-01/ch1/temp", f'{{"ts": {stamp}, "v": {value}}}'))
    batches: list[str] = []
    for b in range(5):
        ts_list, sensors, values = [], [], []
        for j in range(30):
            sensor = ["ch1/pressure", "rf/forward_power", "gas/ar_flow"][j % 3]
            ts = now - 30_000 + b * 1000 + j * 10
            value = round(-5 + b * 3.11 + j * 0.01, 2)
            ts_list.append(ts)
            sensors.append(sensor)
            values.append(value)
            expected[("cvd-02", sensor, ts)] = value
        batches.append(json.dumps({"ts": ts_list, "sensor": sensors, "v": values}))
    malformed = [
        ("fab/etch-01/ch2/temp", f'{{"ts": {now}, "v": NaN}}', "not valid JSON"),
        ("fab/etch-01/ch2/temp", f'{{"ts": {now}, "v": "hot"}}', "v must be a number"),
        ("fab/etch-01/ch2/temp", f'{{"ts": {now}, "v": true}}', "v must be a number"),
        ("fab/etch-01/ch2/temp", f'{{"ts": {now}}}', "missing field v"),
        ("fab/etch-01/ch2/temp", '{"ts": "2026-01-01T00:00:00", "v": 1}', "no UTC offset"),
        ("fab/etch-01/ch2/temp", f'{{"ts": {now + 3_600_000}, "v": 1.0}}', "max_future"),
        ("fab/etch-01/ch2/temp", f'{{"ts": {now - 30 * 86_400_000}, "v": 1.0}}', "max_late"),
        ("fab/etch-01/ch2/temp", f'{{"ts": [{now}], "sensor": ["x"], "v": [1.0]}}', "batch on a single-reading topic"),
        ("fab/cvd-02", f'{{"ts": {now}, "v": 1.0}}', "single reading on a machine topic"),
        ("fab/cvd-02", f'{{"ts": [{now}, {now}], "sensor": ["a"], "v": [1.0, 2.0]}}', "unequal lengths"),
        ("fab/cvd-02", '{"ts": [], "sensor": [], "v": []}', "empty batch"),
        ("fab/cvd-02", f'{{"ts": [{now}], "sensor": ["a"], "v": [1e999]}}', "not valid JSON"),
        ("fab/cvd-02", "this is not json", "not valid JSON"),
        ("fab/cvd-02", '[1, 2, 3]', "must be a JSON object"),
        ("fab//temp", f'{{"ts": {now}, "v": 1.0}}', "empty machine"),
    ]
    return expected, singles, batches, malformed


def _sql_json(config: Path, statement: str) -> list[dict]:
    return json.loads(fabtier_cli("sql", statement, "--config", str(config), "--format", "json").stdout)


def _readings(config: Path) -> list[dict]:
    return _sql_json(config, "SELECT machine, sensor, epoch_ms(ts) AS ms, value FROM readings")


def _check_exactly_once(rows: list[dict], expected: dict) -> None:
    keys = [(r["machine"], r["sensor"], r["ms"]) for r in rows]
    assert len(keys) == len(set(keys)), "a reading appears twice"
    assert set(keys) == set(expected)
    for r in rows:
        assert r["value"] == expected[(r["machine"], r["sensor"], r["ms"])]


def test_every_reading_exactly_once_through_sql_and_parquet(broker, tmp_path):
    settings = make_settings(tmp_path, broker)
    config = write_config(settings, tmp_path / "fabtier.toml")
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        expected, singles, batches, malformed = _expected_and_messages(now)
        for topic, payload in singles:
            mosquitto_pub(broker, topic, payload)
        mosquitto_pub(broker, "fab/cvd-02", *batches)
        for topic, payload, _ in malformed:
            mosquitto_pub(broker, topic, payload)
        # Duplicates: a batch and a single reading sent again must be stored once.
        mosquitto_pub(broker, "fab/cvd-02", batches[2])
        mosquitto_pub(broker, *singles[3])
        sent = len(singles) + len(batches) + len(malformed) + 2
        wait_for(lambda: instance.pipeline.metrics.messages >= sent, what="every message to arrive")
        wait_for(lambda: instance.pipeline.metrics.acked >= sent, what="every message to be acknowledged")

        _check_exactly_once(_readings(config), expected)
        quarantined = _sql_json(config, "SELECT topic, reason, payload FROM quarantine")
        assert len(quarantined) == len(malformed)
        for topic, payload, reason in malformed:
            assert any(q["topic"] == topic and q["payload"] == payload and reason in q["reason"]
                       for q in quarantined), (topic, payload, reason)

        # Move to Parquet through the running instance, then read the same answer again.
        fabtier_cli("lifecycle", "run", "--config", str(config))
        _check_exactly_once(_readings(config), expected)
        moved = _sql_json(config, "SELECT what, sum(rows) AS rows FROM tier_moves GROUP BY what ORDER BY what")
        assert {m["what"]: m["rows"] for m in moved} == {"quarantine": len(malformed), "raw": len(expected)}
    finally:
        instance.stop()

    # The files, read back with plain pyarrow: types and values as published.
    lake = settings.data_dir / "lake"
    files = sorted((lake / "raw").rglob("*.parquet"))
    assert files and all("date=" in f.parent.parent.name and "hour=" in f.parent.name for f in files)
    stored, rows = {}, 0
    for f in files:
        table = pq.read_table(f, partitioning=None)
        assert table.schema.field("machine").type == pa.string()
        assert table.schema.field("sensor").type == pa.string()
        assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
        # value: DOUBLE, or DECIMAL(18, s) for sensors whose values are whole steps of 10**-s
        value_type = table.schema.field("value").type
        assert value_type == pa.float64() or (pa.types.is_decimal(value_type) and value_type.precision == 18)
        rows += table.num_rows
        # float(Decimal) is correctly rounded, so an exact decimal gives back the very double
        stored.update({(m, s, t): float(v) for m, s, t, v in zip(
            table.column("machine").to_pylist(), table.column("sensor").to_pylist(),
            table.column("ts").cast(pa.int64()).to_pylist(), table.column("value").to_pylist(), strict=True)})
    assert stored == expected and rows == len(expected)

    # With the instance stopped, the CLI reads the stores directly and gives the same answer.
    _check_exactly_once(_readings(config), expected)


def test_bad_sql_gets_the_database_message(broker, tmp_path):
    settings = make_settings(tmp_path, broker)
    config = write_config(settings, tmp_path / "fabtier.toml")
    with_instance = Instance(settings).start()
    try:
        for statement, fragment in [
            ("SELECT nope FROM readings", "nope"),
            ("SELEC 1", "syntax error"),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "read-only"),
            ("SELECT * FROM read_csv('/etc/passwd')", "not part of the SQL surface"),
            ("SELECT 1; SELECT 2", "exactly one statement"),
        ]:
            result = fabtier_cli("sql", statement, "--config", str(config), check=False)
            assert result.returncode == 2, result
            assert fragment in result.stderr and "Traceback" not in result.stderr
    finally:
        with_instance.stop()


def test_series_over_http_answers_from_the_hot_ring_while_it_is_written(broker, tmp_path):
    """GET /series: the hot ring's readings of one sensor, bucket means, with its answer time."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from core.clock import ManualClock, SystemClock

    settings = make_settings(tmp_path, broker)
    clock = ManualClock(SystemClock().now_ms())  # the window's start is exact
    instance = Instance(settings, clock=clock).start()

    def series(**query) -> dict:
        url = f"{instance.api_url}/series?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    try:
        now = clock.now_ms()
        first = now - 36_000
        readings = [(first + i * 1000, float(i)) for i in range(30)]
        mosquitto_pub(broker, "fab/cvd-02", json.dumps({
            "ts": [t for t, _ in readings], "sensor": ["ch1/pressure"] * 30, "v": [v for _, v in readings]}))
        wait_for(lambda: instance.pipeline.metrics.acked >= 1, what="the batch to be acknowledged")

        answer = series(machine="cvd-02", sensor="ch1/pressure", minutes=1, points=3)
        assert answer["ts"] == [first, first + 10_000, first + 20_000]
        assert answer["v"] == [4.5, 14.5, 24.5]  # means of 0-9, 10-19, 20-29
        assert answer["query_us"] > 0 and answer["wait_us"] == 0 and answer["fell_back"] is False
        # The last 30 s start 6 s after the first reading: the first 6 are outside.
        recent = series(machine="cvd-02", sensor="ch1/pressure", minutes=0.5, points=100)
        assert recent["ts"] == [t for t, _ in readings[6:]] and recent["v"] == [v for _, v in readings[6:]]
        for query, code, says in (({"machine": "cvd-02", "sensor": "no/such", "minutes": 1}, 404, "GET /sensors"),
                                  ({"machine": "cvd-02"}, 400, "sensor is required")):
            with pytest.raises(urllib.error.HTTPError) as error:
                series(**query)
            assert error.value.code == code and says in json.loads(error.value.read())["error"]
    finally:
        instance.stop()
