"""`fabtier tiers`: per tier rows, bytes, oldest, newest and a monthly cost estimate."""

from __future__ import annotations

import json

import pytest

from core.clock import ManualClock
from fabtier.pipeline import Pipeline
from fabtier.runner import Instance
from tests.conftest import fabtier_cli, make_settings, mosquitto_pub, wait_for, write_config
from tiers.inventory import monthly_cost

MINUTE = 60_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE


def test_monthly_cost_by_class():
    assert monthly_cost(2**30, "STANDARD") == 0.023
    assert monthly_cost(10 * 2**30, "DEEP_ARCHIVE") == pytest.approx(0.0099)
    assert monthly_cost(0, "memory") == 0


def _tiers(config) -> dict:
    out = fabtier_cli("tiers", "--config", str(config), "--json").stdout
    return {t["tier"]: t for t in json.loads(out.splitlines()[-1])["tiers"]}


def test_tiers_offline_count_every_row_where_it_is(tmp_path):
    settings = make_settings(tmp_path, None)
    config = write_config(settings, tmp_path / "fabtier.toml")
    pipeline = Pipeline(settings, clock=ManualClock(T0 + 5 * MINUTE))
    pipeline.open()
    payload = {"ts": [T0 + i * 10_000 for i in range(12)], "sensor": ["p"] * 12, "v": [float(i) for i in range(12)]}
    pipeline.process([("fab/cvd-02", json.dumps(payload).encode(), 0, 0)])
    pipeline.close_offline()

    before = _tiers(config)
    assert before["unsealed (log)"]["rows"] == 12 and before["cold raw"]["rows"] == 0
    assert (before["unsealed (log)"]["oldest_ms"], before["unsealed (log)"]["newest_ms"]) == (T0, T0 + 110_000)

    fabtier_cli("lifecycle", "run", "--config", str(config))
    after = _tiers(config)
    assert after["unsealed (log)"]["rows"] == 0
    raw = after["cold raw"]
    assert (raw["rows"], raw["oldest_ms"], raw["newest_ms"], raw["storage_class"]) == (12, T0, T0 + 110_000, "local-disk")
    assert raw["bytes"] == sum(f.stat().st_size for f in (settings.data_dir / "lake" / "raw").rglob("*.parquet"))
    assert raw["usd_per_month"] == monthly_cost(raw["bytes"], "local-disk") > 0
    # The minutes are older than the 90 days of warm retention: they went on to agg_1m.
    agg, warm = after["cold agg_1m"], after["warm (readings_1m)"]
    assert (agg["rows"], agg["oldest_ms"], agg["newest_ms"], warm["rows"]) == (2, T0, T0 + MINUTE, 0)
    text = fabtier_cli("tiers", "--config", str(config)).stdout
    assert "cold raw" in text and "USD a month" in text


def test_tiers_of_a_running_instance_include_the_hot_ring(broker, tmp_path):
    settings = make_settings(tmp_path, broker)
    config = write_config(settings, tmp_path / "fabtier.toml")
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        mosquitto_pub(broker, "fab/etch-01", json.dumps({"ts": [now - 5000, now - 4000], "sensor": ["a", "b"],
                                                         "v": [1.0, 2.0]}))
        wait_for(lambda: instance.pipeline.metrics.acked >= 1, what="the message to be durable")
        tiers = _tiers(config)
        assert (tiers["hot ring"]["rows"], tiers["hot ring"]["oldest_ms"], tiers["hot ring"]["newest_ms"]) == (
            2, now - 5000, now - 4000)
        assert tiers["unsealed (log)"]["rows"] == 2 and tiers["hot ring"]["storage_class"] == "memory"
    finally:
        instance.stop()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_tiers_show_every_kind_of_data_per_storage_class(tmp_path, request, where):
    settings = make_settings(tmp_path, None, alerts={"rules": [{"name": "hot", "sensor": "*/temp", "high": 80.0}]})
    cold = ""
    if where == "s3":
        endpoint, bucket = request.getfixturevalue("s3_bucket")
        cold = f'store = "s3://{bucket}/lake"\nendpoint_url = "{endpoint}"\n'
        settings = make_settings(tmp_path, None, cold={"store": f"s3://{bucket}/lake", "endpoint_url": endpoint},
                                 alerts={"rules": [{"name": "hot", "sensor": "*/temp", "high": 80.0}]})
    config = tmp_path / "fabtier.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n[api]\nport = {settings.api.port}\n[cold]\n{cold}',
                      encoding="utf-8")
    pipeline = Pipeline(settings, clock=ManualClock(T0 + 5 * MINUTE))
    pipeline.open(warm=False)
    readings = {"ts": [T0 + i * 10_000 for i in range(6)], "sensor": ["temp"] * 6, "v": [20.0, 90.0, 20.0] * 2}
    pipeline.process([("fab/etch-01", json.dumps(readings).encode(), 0, 0),
                      ("fab-ctx/etch-01", json.dumps({"ts": T0, "event": "start", "lot": "L1", "wafer": "W1",
                                                      "recipe": "R"}).encode(), 0, 0),
                      ("fab/etch-01/temp", b"not json", 0, 0)])
    pipeline.wal.commit()
    pipeline.seal()
    store = pipeline.lake.store
    pipeline.close_offline()
    # The alerts in STANDARD_IA (readable), the lot context in DEEP_ARCHIVE (as an earlier
    # version's lifecycle left it)
    (alerts,) = [o.key for o in store.objects("alerts/")]
    (context,) = [o.key for o in store.objects("context/")]
    store.set_storage_class(alerts, "STANDARD_IA")
    store.set_storage_class(context, "DEEP_ARCHIVE")

    tiers = _tiers(config)
    local = ", recorded locally" if where == "local" else ""
    ia, frozen = tiers[f"cold alerts (STANDARD_IA{local})"], tiers[f"frozen context (DEEP_ARCHIVE{local})"]
    assert (ia["rows"], ia["oldest_ms"], ia["newest_ms"]) == (4, T0 + 10_000, T0 + 50_000)  # 2 raised, 2 cleared
    assert ia["storage_class"] == ("local-disk" if local else "STANDARD_IA") and ia["bytes"] > 0
    assert frozen["storage_class"] == ("local-disk" if local else "DEEP_ARCHIVE") and frozen["bytes"] > 0
    if local:  # a local store can still read what it records as archived
        assert (frozen["rows"], frozen["oldest_ms"]) == (1, T0)
    else:  # S3 cannot open an archived object: rows unknown, the time range is its day's
        day = T0 - T0 % 86_400_000
        assert (frozen["rows"], frozen["oldest_ms"], frozen["newest_ms"]) == (0, day, day + 86_400_000 - 1)
    assert tiers["cold alerts"]["rows"] == 0 and tiers["cold context"]["rows"] == 0  # STANDARD: none left
    assert tiers["cold quarantine"]["rows"] == 1 and tiers["cold raw"]["rows"] == 6
    assert tiers["cold agg_1m"]["rows"] == 0
