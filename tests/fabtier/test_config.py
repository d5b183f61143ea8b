import logging
import tomllib

import pytest

from core.errors import ConfigError
from core.settings import Secret
from fabtier.config import load_settings, settings_from_mapping


def test_defaults_match_the_contract():
    s = settings_from_mapping({}, env={})
    assert s.broker.url == "mqtt://127.0.0.1:1883" and s.broker.topic_root == "fab"
    assert s.broker.ctx_root == "fab-ctx" and s.broker.alert_root == "fab-alerts"
    assert s.hot.window == 3600 and s.hot.memory_budget == 2 * 2**30
    assert s.ingest.max_future == 900 and s.ingest.max_late == 7 * 86400
    assert s.cold.seal_every == 60 and s.warm.retention == 90 * 86400
    assert (s.lifecycle.glacier_after, s.lifecycle.deep_archive_after, s.lifecycle.expire_after) == (
        90 * 86400, 365 * 86400, 2555 * 86400)
    assert s.api.port == 8080 and s.store_url.startswith("file:///") and s.store_url.endswith("/lake")


def test_environment_overrides_file_and_secrets_never_print(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('[cold]\nseal_every = "5s"\n[api]\ntoken = "t0k3n-xyzzy"\n')
    s = load_settings(path, env={"FABTIER_COLD_SEAL_EVERY": "7s", "FABTIER_BROKER_PASSWORD": "pa55-plugh",
                                 "FABTIER_DATA_DIR": "/tmp/x"})
    assert s.cold.seal_every == 7 and str(s.data_dir) == "/tmp/x"
    assert s.broker.password.reveal() == "pa55-plugh" and "plugh" not in repr(s) and "xyzzy" not in repr(s)
    assert s.api.token == Secret("t0k3n-xyzzy")


@pytest.mark.parametrize("doc, key, fix", [
    ({"cold": {"seel_every": "1m"}}, "[cold] seel_every", "did you mean 'seal_every'"),
    ({"cold": {"seal_every": "soon"}}, "[cold] seal_every", "ms, s, m, h, d"),
    ({"hot": {"memory_budget": "lots"}}, "[hot] memory_budget", "GiB"),
    ({"api": {"port": 70000}}, "[api] port", "0 to 65535"),
    ({"broker": {"url": "http://x"}}, "[broker] url", "mqtt://host:port"),
    ({"broker": {"password": "x"}}, "[broker] password", "FABTIER_BROKER_PASSWORD"),
    ({"broker": {"topic_root": "fab/#"}}, "[broker] topic_root", "without wildcards"),
    ({"broker": {"ctx_root": "fab"}}, "[broker] topic_root", "distinct"),
    ({"cold": {"store": "ftp://x"}}, "[cold] store", "s3://bucket/prefix"),
    ({"lifecycle": {"glacier_after": "400d"}}, "[lifecycle] deep_archive_after", "glacier_after <"),
    ({"colde": {}}, "colde", "did you mean 'cold'"),
    ({"alerts": {"rules": [{"name": "r", "sensor": "*"}]}}, "[[alerts.rules]] #1", "high, low or both"),
    ({"alerts": {"rules": [{"name": "r", "sensor": "*", "high": "x"}]}}, "[[alerts.rules]] #1 high", "number"),
])
def test_a_bad_key_or_value_names_the_key_and_the_fix(doc, key, fix):
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(doc, env={})
    assert caught.value.key == key and fix in str(caught.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({}, env={"FABTIER_API_PORT": "eighty"})
    assert caught.value.key == "FABTIER_API_PORT"


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[cold\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})


def test_a_toml_syntax_error_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "fabtier.toml"
    bad.write_text('[cold]\nseal_every = "1m"\nstore = s3://bucket\n')
    with pytest.raises(tomllib.TOMLDecodeError) as parsed:
        tomllib.loads(bad.read_text())
    with pytest.raises(ConfigError) as caught:
        load_settings(bad, env={})
    assert str(caught.value) == f"{bad} is not valid TOML: {parsed.value}"
    assert "line 3, column" in str(caught.value) and "config key" not in str(caught.value)


def test_a_misspelt_environment_variable_is_warned_about(caplog):
    env = {"FABTIER_COLD_SEAL_EVRY": "5s", "FABTIER_API_TOKN": "x", "FABTIER_BROKER_PASSWORD": "p",
           "FABTIER_API_TOKEN": "t", "FABTIER_ALERTS_WEBHOOK_TOKEN": "w", "FABTIER_INFLUX_TOKEN": "i",
           "FABTIER_DATA_DIR": "/tmp/x", "FABTIER_COLD_SEAL_EVERY": "7s", "FABTIERISH": "not ours"}
    with caplog.at_level(logging.WARNING, logger="fabtier.config"):
        s = settings_from_mapping({}, env=env)
    assert s.cold.seal_every == 7
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert len(warnings) == 2, warnings
    assert "FABTIER_API_TOKN" in warnings[0] and "FABTIER_API_TOKEN" in warnings[0]
    assert "FABTIER_COLD_SEAL_EVRY" in warnings[1] and "FABTIER_COLD_SEAL_EVERY" in warnings[1]
    assert all("ignored" in w for w in warnings)


@pytest.mark.parametrize("doc, names", [
    ({"lifecycle": {"glacier_after": "5d", "deep_archive_after": "10d"}}, "[ingest] max_late"),
    ({"lifecycle": {"glacier_after": "7d", "deep_archive_after": "10d"}}, "[ingest] max_late"),  # not greater
    ({"cold": {"compact_after": "90d"}}, "[cold] compact_after"),
    ({"cold": {"compact_after": "2h"}, "ingest": {"max_late": "1h"},
      "lifecycle": {"glacier_after": "3h", "deep_archive_after": "5d"}}, "[cold] compact_after"),  # plus an hour
])
def test_archiving_before_late_data_or_compaction_is_refused(doc, names):
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(doc, env={})
    assert caught.value.key == "[lifecycle] glacier_after" and names in str(caught.value)
    assert "glacier_after" in caught.value.fix


def test_short_lifecycle_ages_load_with_a_short_max_late_and_compact_after():
    s = settings_from_mapping({"cold": {"compact_after": "0s"}, "ingest": {"max_late": "1h"},
                               "lifecycle": {"glacier_after": "61m", "deep_archive_after": "2h",
                                             "expire_after": "3h"}}, env={})
    assert s.lifecycle.glacier_after == 61 * 60


def test_alert_rules_are_parsed():
    s = settings_from_mapping({"alerts": {"rules": [
        {"name": "overtemp", "sensor": "*/ch*/temp", "high": 80, "low": 10, "for": "2s", "hysteresis": 1.5}]}}, env={})
    rule = s.alert_rules[0]
    assert (rule.high, rule.low, rule.for_seconds, rule.hysteresis) == (80.0, 10.0, 2.0, 1.5)
    assert rule.matches("etch-01", "ch2/temp") and not rule.matches("etch-01", "rf/power")


def test_warm_and_sink_settings_defaults_and_errors():
    s = settings_from_mapping({}, env={})
    assert (s.warm.rollup_every, s.warm.age_out_every) == (60, 3600)
    assert not s.timestream.enabled and not s.influx.enabled
    assert (s.timestream.memory_retention, s.timestream.magnetic_retention) == (24 * 3600, 90 * 86400)
    s = settings_from_mapping({"timestream": {"enabled": "true"}}, env={"FABTIER_INFLUX_TOKEN": "tok-frob"})
    assert s.timestream.enabled and s.influx.token.reveal() == "tok-frob" and "frob" not in repr(s)
    for doc, key, fix in [
        ({"timestream": {"enabled": "maybe"}}, "[timestream] enabled", "true or false"),
        ({"timestream": {"memory_retention": "10m"}}, "[timestream] memory_retention", "24h"),
        ({"timestream": {"magnetic_retention": "500y"}}, "[timestream] magnetic_retention", "ms, s, m"),
        ({"timestream": {"queue_readings": 0}}, "[timestream] queue_readings", "at least 1"),
        ({"influx": {"enabled": True}}, "[influx] url", "8086"),
        ({"influx": {"api": "v3"}}, "[influx] api", "v2"),
        ({"warm": {"rollup_every": "0s"}}, "[warm] rollup_every", "longer than zero"),
    ]:
        with pytest.raises(ConfigError) as caught:
            settings_from_mapping(doc, env={})
        assert caught.value.key == key and fix in str(caught.value), (doc, str(caught.value))
