"""The HTTP API's answers to bad and unauthorised requests (issue 15, findings 6, 7, 17): a
clear 4xx naming the problem, nothing run, no traceback, no dropped connection."""

import dataclasses
import json
import urllib.error
import urllib.request

import pytest

from core.settings import Secret
from fabtier.api import ApiServer
from fabtier.pipeline import Pipeline
from fabtier.runner import Instance
from tests.conftest import make_settings, wait_for

TOKEN = "s3cret-token"


def call(url: str, method: str = "GET", body: bytes | None = None, token: str | None = TOKEN,
         content_type: str = "text/plain") -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from fabtier.broker import LocalBroker
    tmp = tmp_path_factory.mktemp("api")
    broker = LocalBroker(tmp / "broker").start()
    settings = make_settings(tmp, broker)
    settings = dataclasses.replace(settings, api=dataclasses.replace(settings.api, token=Secret(TOKEN)))
    instance = Instance(settings).start()
    now = instance.pipeline.clock.now_ms()
    instance.pipeline.process([("fab/etch-01", json.dumps({"ts": [now - 2000, now - 1000], "sensor": ["t", "t"],
                                                           "v": [1.0, 2.0]}).encode(), 0, 0)])
    wait_for(lambda: instance.pipeline.sensors(), what="the sensor to be known")
    yield instance, settings
    instance.stop()
    broker.stop()


@pytest.mark.parametrize(("query", "param"), [
    ("machine=etch-01&sensor=t&minutes=inf", "minutes"),
    ("machine=etch-01&sensor=t&minutes=nan", "minutes"),
    ("machine=etch-01&sensor=t&minutes=1e308", "minutes"),
    ("machine=etch-01&sensor=t&minutes=-5", "minutes"),
    ("machine=etch-01&sensor=t&minutes=0", "minutes"),
    ("machine=etch-01&sensor=t&minutes=ten", "minutes"),
    ("machine=etch-01&sensor=t&points=0", "points"),
    ("machine=etch-01&sensor=t&points=-3", "points"),
    ("machine=etch-01&sensor=t&points=1.5", "points"),
    ("sensor=t", "machine"),
    ("machine=etch-01&sensor=", "sensor"),
])
def test_series_parameters_that_do_not_fit_are_400_naming_them(running, query, param):
    instance, _ = running
    status, _, body = call(f"{instance.api_url}/series?{query}")
    assert (status, body["parameter"]) == (400, param), body
    assert param in body["error"]


def test_series_of_an_unknown_sensor_is_404_and_a_good_one_answers(running):
    instance, _ = running
    status, _, body = call(f"{instance.api_url}/series?machine=nope&sensor=t")
    assert status == 404 and "GET /sensors" in body["error"]
    status, _, body = call(f"{instance.api_url}/series?machine=etch-01&sensor=t&minutes=5&points=1")
    assert status == 200 and len(body["ts"]) == 1 and body["v"] == [1.5]


@pytest.mark.parametrize("now", ["99999999999999999999", "-1", "0", "12.5", "soon"])
def test_a_lifecycle_run_with_a_now_that_does_not_fit_runs_no_job(running, now):
    instance, settings = running
    status, _, body = call(f"{instance.api_url}/lifecycle/run?now={now}", "POST", b"")
    assert (status, body["parameter"]) == (400, "now"), body
    runs = settings.data_dir / "lifecycle" / "runs.jsonl"
    assert not runs.exists() or '"trigger":"manual"' not in runs.read_text()


@pytest.mark.parametrize(("body", "content_type", "says"), [
    (b'{"sql": 5}', "application/json", "sql must be a string"),
    (b'{"query": "SELECT 1"}', "application/json", '{"sql":'),
    (b"{not json", "application/json", "not JSON"),
    (b"   ", "text/plain", "empty"),
    (b"\xff\xfe", "text/plain", "UTF-8"),
])
def test_sql_bodies_that_do_not_fit_are_400(running, body, content_type, says):
    instance, _ = running
    status, _, answer = call(f"{instance.api_url}/sql", "POST", body, content_type=content_type)
    assert status == 400 and says in answer["error"], answer


def test_a_bad_statement_gets_the_databases_message(running):
    instance, _ = running
    status, _, answer = call(f"{instance.api_url}/sql", "POST", b"SELECT nope FROM readings")
    assert status == 400 and "nope" in answer["error"]


def test_methods_and_routes(running):
    instance, _ = running
    status, headers, body = call(f"{instance.api_url}/sql", "DELETE")
    assert status == 405 and headers["Allow"] == "POST" and "POST" in body["error"]
    status, headers, _ = call(f"{instance.api_url}/sql")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = call(f"{instance.api_url}/series", "PUT", b"")
    assert status == 405 and headers["Allow"] == "GET"
    status, _, body = call(f"{instance.api_url}/nowhere")
    assert status == 404 and "/nowhere" in body["error"]


def test_the_token_guards_everything_but_health(running):
    instance, _ = running
    for path, method in (("/metrics", "GET"), ("/sql", "POST"), ("/series?machine=etch-01&sensor=t", "GET"),
                         ("/lifecycle/run", "POST")):
        for token in (None, "wrong"):
            status, headers, body = call(instance.api_url + path, method, b"" if method == "POST" else None,
                                         token=token)
            assert status == 401, (path, token)
            assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, body = call(instance.api_url + "/health", token=None)
    assert status == 200 and body["status"] == "ready"


def test_before_it_is_ready_health_and_jobs_answer_503(tmp_path):
    settings = make_settings(tmp_path, None)
    pipeline = Pipeline(settings)
    pipeline.open(warm=False)  # recovered, not subscribed: not ready
    api = ApiServer(pipeline, host="127.0.0.1", port=0)
    api.start()
    try:
        url = f"http://127.0.0.1:{api.port}"
        status, _, body = call(url + "/health", token=None)
        assert (status, body["status"]) == (503, "recovering")
        status, _, body = call(url + "/lifecycle/run", "POST", b"", token=None)
        assert status == 503 and "recovering" in body["error"]
        assert not (settings.data_dir / "lifecycle" / "runs.jsonl").exists()
    finally:
        api.stop()
        pipeline.close_offline()

