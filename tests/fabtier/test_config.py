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
