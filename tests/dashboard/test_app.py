"""The dashboard's pages and data behind the instance's token: a login page that sets an
HTTP-only cookie, 401 for data without it, open without a token."""

from __future__ import annotations

import warnings

import pytest

with warnings.catch_warnings():  # Starlette 1.x would rather have httpx2 under its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from dashboard.app import COOKIE, create_app, session_value
from dashboard.instance import Instance
from dashboard.live import Live
from tests.dashboard.fakeinstance import FakeInstance

TOKEN = "s3cret-token"


def _client(token: str, fake: FakeInstance | None = None) -> TestClient:
    fake = fake or FakeInstance(routes=("/health", "/sql", "/alerts", "/alerts/{id}/ack"), token=token)
    live = Live(Instance("http://instance", token=token, transport=fake.transport))
    return TestClient(create_app(live, token=token), follow_redirects=False)


def test_without_the_token_pages_go_to_the_login_and_data_is_refused():
    with _client(TOKEN) as client:
        page = client.get("/machine/etch-01?x=1")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fmachine%2Fetch-01%3Fx%3D1"
        for path in ("/api/alerts", "/events/overview", "/api/snapshot/overview"):
            refused = client.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert client.post("/api/alerts/w0:1/ack", json={"who": "x"}).status_code == 401
        assert client.get("/login").status_code == 200
        assert client.get("/static/dash.css").status_code == 200


def test_the_login_sets_an_http_only_cookie_that_is_not_the_token():
    with _client(TOKEN) as client:
        wrong = client.post("/login", data={"token": "guess", "next": "/alerts"})
        assert wrong.status_code == 401 and "not the instance" in wrong.text and COOKIE not in wrong.cookies
        right = client.post("/login", data={"token": TOKEN, "next": "/alerts"})
        assert right.status_code == 303 and right.headers["location"] == "/alerts"
        cookie = right.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie
        assert client.cookies[COOKIE] == session_value(TOKEN)
        assert client.get("/alerts").status_code == 200
        alerts = client.get("/api/alerts?state=open")
        assert alerts.status_code == 200 and [a["id"] for a in alerts.json()] == ["w0:2"]
        assert client.post("/logout").status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example"])
def test_the_login_never_redirects_to_another_site(target):
    with _client(TOKEN) as client:
        response = client.post("/login", data={"token": TOKEN, "next": target})
        assert response.headers["location"] == "/"


def test_the_bearer_token_opens_the_data_too_and_without_a_token_all_is_open():
    with _client(TOKEN) as client:
        assert client.get("/api/alerts", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    with _client("") as client:
        assert client.get("/").status_code == 200
        assert client.get("/api/alerts").status_code == 200


def test_an_acknowledgement_needs_who_and_goes_to_the_instance():
    fake = FakeInstance(routes=("/health", "/sql", "/alerts", "/alerts/{id}/ack"))
    with _client("", fake) as client:
        assert client.post("/api/alerts/w0:2/ack", json={"note": "x"}).json()["parameter"] == "who"
        assert client.post("/api/alerts/w0:2/ack", content=b"not json").status_code == 400
        done = client.post("/api/alerts/w0:2/ack", json={"who": " kim ", "note": "checked"})
        assert done.status_code == 200 and done.json()["ack"]["who"] == "kim"
        assert fake.acks["w0:2"][0]["note"] == "checked"
        assert client.get("/api/alerts?state=bad").status_code == 400
