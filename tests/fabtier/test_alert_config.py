import pytest

from core.errors import ConfigError
from fabtier.config import settings_from_mapping

RULE = {"name": "r", "sensor": "*", "high": 1.0}


def test_alert_settings_defaults_and_environment(tmp_path):
    s = settings_from_mapping({}, env={})
    assert (s.alerts.recipes, s.alerts.flap_max, s.alerts.flap_window, s.alerts.webhook_url) == ("", 3, 300.0, "")
    s = settings_from_mapping({"alerts": {"rules": [RULE], "flap_max": 0, "webhook_url": "http://h:1/x"}},
                              env={"FABTIER_ALERTS_WEBHOOK_TOKEN": "s3cr3t-zork", "FABTIER_ALERTS_FLAP_WINDOW": "30s"})
    assert s.alerts.flap_max == 0 and s.alerts.flap_window == 30 and s.alert_rules[0].name == "r"
    assert s.alerts.webhook_token.reveal() == "s3cr3t-zork" and "zork" not in repr(s)


def test_a_recipe_rule_reads_the_recipe_file(tmp_path):
    path = tmp_path / "recipes.toml"
    path.write_text('[[recipes]]\nname = "R"\nversion = "1"\neffective = 0\n'
                    '[[recipes.steps]]\nname = "s"\nduration = "1s"\nlimits = { temp = [1.0, 0.5] }\n')
    s = settings_from_mapping({"alerts": {"recipes": str(path), "rules": [
        {"name": "w", "sensor": "*", "recipe": True, "hysteresis": 0.2}]}}, env={})
    assert s.alert_rules[0].recipe and s.alert_rules[0].high is None


@pytest.mark.parametrize("alerts, key, fix", [
    ({"rules": [{"name": "w", "sensor": "*", "recipe": True}]}, "[[alerts.rules]] #1 recipe", "[alerts] recipes"),
    ({"rules": [{"name": "w", "sensor": "*", "recipe": True, "high": 3}]}, "[[alerts.rules]] #1 recipe", "not both"),
    ({"rules": [{"name": "w", "sensor": "*", "recipe": "yes"}]}, "[[alerts.rules]] #1 recipe", "recipe = true"),
    ({"rules": [RULE, RULE]}, "[[alerts.rules]] #2 name", "its own name"),
    ({"rules": [dict(RULE, hysteresis=-1)]}, "[[alerts.rules]] #1 hysteresis", "0 or more"),
    ({"recipes": "/nonexistent/recipes.toml"}, "[alerts] recipes", "path of the recipe file"),
    ({"flap_max": -1}, "[alerts] flap_max", "whole number"),
    ({"webhook_url": "ftp://x"}, "[alerts] webhook_url", "http://host:port"),
    ({"webhook_token": "x"}, "[alerts] webhook_token", "FABTIER_ALERTS_WEBHOOK_TOKEN"),
    ({"flap_windw": "1m"}, "[alerts] flap_windw", "did you mean 'flap_window'"),
    ({"sns_endpoint_url": "http://127.0.0.1:5000"}, "[alerts] sns_topic_arn", "ARN"),
])
def test_a_bad_alert_setting_names_the_key_and_the_fix(alerts, key, fix):
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"alerts": alerts}, env={})
    assert caught.value.key == key and fix in str(caught.value)


def test_a_bad_recipe_file_is_a_config_error_naming_the_entry(tmp_path):
    path = tmp_path / "recipes.toml"
    path.write_text('[[recipes]]\nname = "R"\nversion = "1"\neffective = "soon"\nsteps = []\n')
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"alerts": {"recipes": str(path)}}, env={})
    assert caught.value.key == "[alerts] recipes" and "recipes #1 (R v1).effective" in str(caught.value)
