"""The dashboard's pure parts: SQL it sends, bucket merging, recipe limits per bucket, alerts
in whatever shape the instance gives them."""

from __future__ import annotations

import pytest

from dashboard import views


def test_sql_literals_escape_and_times_are_utc_wall_time():
    assert views.sql_text("o'brien") == "'o''brien'"
    assert views.sql_time(1764000000123) == "TIMESTAMP '2025-11-24 16:00:00.123'"
    sql = views.bands_sql("etch-'01", 1764000000000, 1000, ["ch1/temp"])
    assert "machine = 'etch-''01'" in sql and "ts >= TIMESTAMP '2025-11-24 16:00:00.000'" in sql
    assert "sensor IN ('ch1/temp')" in sql and "min(value)" in sql and "max(value)" in sql


@pytest.mark.parametrize(("minutes", "bucket"), [(5, 1000), (1, 250), (60, 15_000), (1440, 300_000)])
def test_bucket_width_gives_about_300_buckets(minutes, bucket):
    assert views.bucket_ms_for(minutes) == bucket


def test_alerts_sql_filters_and_open_takes_the_last_event_per_excursion():
    recent = views.alerts_sql(machine="etch-01", rule="r", lot="L'1", limit=10)
    assert "machine = 'etch-01'" in recent and "lot = 'L''1'" in recent and recent.endswith("LIMIT 10")
    opened = views.alerts_sql(state="open")
    assert "PARTITION BY machine, sensor, rule" in opened and "state = 'raised'" in opened


def _row(sensor, t, mn, mx, av, n=2):
    return {"sensor": sensor, "t": t, "mn": mn, "mx": mx, "av": av, "n": n}


def test_bands_merge_replace_changed_buckets_drop_old_ones_and_resume_before_the_newest():
    bands = views.Bands(window_ms=10_000, bucket_ms=1000)
    changed = bands.merge([_row("a", 1000, 1, 3, 2), _row("a", 2000, 1, 4, 2), _row("b", 2000, 0, 0, 0)], now_ms=5000)
    assert changed == {"a": [1000, 2000], "b": [2000]}
    assert bands.resume_from(5000) == 1000  # the newest bucket (2000) may still fill, and one before
    # the same answer again changes nothing; a fuller newest bucket is a change
    assert bands.merge([_row("a", 2000, 1, 4, 2)], now_ms=5000) == {}
    assert bands.merge([_row("a", 2000, 0, 5, 2, 3)], now_ms=5000) == {"a": [2000]}
    assert bands.series("a") == {"t": [1000, 2000], "mn": [1, 0], "mx": [3, 5], "av": [2, 2], "n": [2, 3]}
    assert bands.series("a", since=2000)["t"] == [2000]
    bands.merge([], now_ms=11_500)  # the window now starts at 1000 (11_500 - 10_000, floored)
    assert bands.series("a")["t"] == [1000, 2000]
    bands.merge([], now_ms=12_000)
    assert bands.series("a")["t"] == [2000]
    assert views.Bands(window_ms=10_000, bucket_ms=1000).resume_from(15_500) == 5000


STEPS = views.recipe_steps([
    {"recipe": "R", "version": "1", "step_no": 1, "step": "heat", "step_start_s": 0, "step_end_s": 10, "settle_s": 2,
     "kind": "temp", "low": 57.0, "high": 63.0},
    {"recipe": "R", "version": "1", "step_no": 1, "step": "heat", "step_start_s": 0, "step_end_s": 10, "settle_s": 2,
     "kind": "gas/ar_flow", "low": 95.0, "high": 105.0},
    {"recipe": "R", "version": "1", "step_no": 2, "step": "etch", "step_start_s": 10, "step_end_s": 20,
     "settle_s": 1, "kind": "temp", "low": 62.0, "high": 68.0},
])


def test_recipe_steps_and_the_step_a_run_is_in():
    assert [s.name for s in STEPS[("R", "1")]] == ["heat", "etch"]
    run = {"recipe": "R", "recipe_version": "1", "start_ms": 100_000, "end_ms": None}
    assert views.step_at(run, STEPS, 99_999) is None
    assert views.step_at(run, STEPS, 100_000).name == "heat"
    assert views.step_at(run, STEPS, 110_000).name == "etch"
    assert views.step_at(run, STEPS, 120_000) is None  # past the last step
    assert views.step_at({**run, "recipe_version": None}, STEPS, 105_000) is None  # no recipe data
    assert views.step_at({**run, "end_ms": 105_000}, STEPS, 106_000) is None


def test_limits_apply_per_bucket_from_the_steps_settle_by_the_sensors_kind():
    runs = [{"recipe": "R", "recipe_version": "1", "start_ms": 100_000, "end_ms": None}]
    times = [99_000, 100_000, 102_000, 109_000, 110_000, 111_000, 125_000]
    low, high = views.limits_for("ch2/temp", times, runs, STEPS)
    assert low == [None, None, 57.0, 57.0, None, 62.0, None]
    assert high == [None, None, 63.0, 63.0, None, 68.0, None]
    assert views.limits_for("gas/ar_flow", [103_000, 111_000], runs, STEPS) == ([95.0, None], [105.0, None])
    assert views.limits_for("ch1/pressure", [103_000], runs, STEPS) == ([None], [None])
    # a bucket is judged by its middle: [101_500, 102_500) is past the 2 s settle at 102_000
    assert views.limits_for("ch1/temp", [101_500], runs, STEPS, bucket_ms=1000) == ([57.0], [63.0])


def test_an_alert_from_mqtt_from_get_alerts_and_from_sql_reads_the_same():
    mqtt = views.normalise_alert({"machine": "m", "sensor": "s", "rule": "r", "ts": 1764000000123,
                                  "raised_at": 1764000000131, "state": "raised", "id": "w0:1"})
    assert mqtt["ts"] == 1764000000123 and mqtt["ack"] is None and mqtt["key"] == "m|s|r"
    listed = views.normalise_alert({"machine": "m", "sensor": "s", "rule": "r", "ts": 1, "raised_at": 2,
                                    "acked": True, "acks": [{"who": "kim", "at": 5, "note": ""},
                                                            {"who": "lee", "at": 6, "note": "again"}]})
    assert listed["ack"] == {"who": "kim", "note": None, "at": 5} and len(listed["acks"]) == 2
    sql = views.normalise_alert({"machine": "m", "sensor": "s", "rule": "r", "ts": "2025-11-24T16:00:00.123",
                                 "raised_at": "2025-11-24T16:00:00.131", "acked_by": "kim", "ack_note": "n"})
    assert sql["ts"] == 1764000000123 and sql["raised_at"] == 1764000000131
    assert sql["ack"]["who"] == "kim" and sql["ack"]["note"] == "n"
    assert views.epoch_ms(None) is None and views.epoch_ms("not a time") is None and views.epoch_ms(True) is None
