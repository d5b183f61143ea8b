"""`GET /` of the instance is the operators' dashboard (CONTRACT.md section 5): the dashboard
is a process of its own, and `/` sends a browser to it, on this host at [api] dashboard_port."""

import http.client

import pytest

from core.errors import ConfigError
from fabtier.config import settings_from_mapping
from fabtier.runner import Instance
from tests.conftest import make_settings


def test_the_root_sends_a_browser_to_the_dashboard_without_a_token(tmp_path, broker):
    settings = make_settings(tmp_path, broker, api={"token": "s3cret", "dashboard_port": 18090})
    instance = Instance(settings).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", settings.api.port, timeout=10)
        connection.request("GET", "/")
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 307 and answer.getheader("Location") == "http://127.0.0.1:18090/"
        connection.request("GET", "/metrics")  # the API itself still wants the token
        assert connection.getresponse().status == 401
        connection.close()
    finally:
        instance.stop()


def test_the_dashboard_port_is_a_checked_key():
    assert settings_from_mapping({}, env={}).api.dashboard_port == 8090
    assert settings_from_mapping({"api": {"dashboard_port": 9000}}, env={}).api.dashboard_port == 9000
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping({"api": {"dashboard_port": 70000}}, env={})
    assert "dashboard_port" in str(raised.value)
