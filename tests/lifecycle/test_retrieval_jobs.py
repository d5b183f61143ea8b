"""Retrieval jobs on a local store with restores timed by a ManualClock: durable job files,
restores asked once and shared between overlapping jobs, the follower, failures, crashes,
and the notifiers (a real mosquitto for MQTT, a local HTTP receiver for the webhook)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from core.clock import ManualClock
from core.records import DEEP_ARCHIVE, GLACIER
from fabtier.config import settings_from_mapping
from ingest.codec import ReadingBatch
from lifecycle import notify, retrievals
from lifecycle import retrieval as rt
from lifecycle.retrieval import State
from tiers.cold import ColdLake
from tiers.store import LocalStore
from tiers.unsealed import tables_from_records

HOUR = 3_600_000
T0 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR


class CountingStore(LocalStore):
    """A local store that counts restore requests per key (and can crash on one)."""

    def __init__(self, *args, crash_on_restore: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()
        self.crash_on_restore = crash_on_restore

    def restore(self, key, *, keep_s, speed):
        if self.crash_on_restore:
            raise KeyboardInterrupt("killed while asking for restores")
        self.calls[key] += 1
        return super().restore(key, keep_s=keep_s, speed=speed)


class Recorder:
    name = "mqtt"

    def __init__(self, fail: int = 0) -> None:
        self.seen: list[tuple[str, str]] = []
        self.fail = fail

    def notify(self, job: dict) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise notify.NotifyError("broker away")
        self.seen.append((job["id"], job["state"]))


def _settings(tmp_path, **retrieval):
    values = {"local_glacier_standard": "20s", "local_glacier_bulk": "60s", "local_deep_archive_standard": "40s",
              "local_deep_archive_bulk": "120s", "local_glacier_expedited": "2s", "keep_restored": "1000s"}
    values.update(retrieval)
    return settings_from_mapping({"data_dir": str(tmp_path / "data"), "retrieval": values}, env={})


def _lake(tmp_path, settings, clock, store_class=None, **kwargs):
    """Three hours of readings; the first two archived (hour 0 GLACIER, hour 1 DEEP_ARCHIVE)."""
    store = (store_class or CountingStore)(tmp_path / "lake", clock=clock,
                                           restore_times=settings.retrieval.local_restore_seconds, **kwargs)
    lake = ColdLake(store, writer_id="w0")
    rows = [(m, "s", T0 + h * HOUR + i, float(i)) for h in range(3) for m in ("a", "b") for i in range(3)]
    batches = [ReadingBatch(m, [s], np.zeros(1, np.uint32), np.array([t], np.int64), np.array([v]))
               for m, s, t, v in rows]
    lake.write_segment(1, tables_from_records(batches), source="test")
    for f in lake.lake_files("raw"):
        hour = (int(f.hour or 0) - (T0 // HOUR) % 24) % 24
        if hour < 2:
            store.set_storage_class(f.key, GLACIER if hour == 0 else DEEP_ARCHIVE)
    return lake


def _readings(lake) -> int:
    return lake.read_raw().num_rows


def test_a_job_restores_its_hours_and_becomes_ready(tmp_path):
    settings, clock = _settings(tmp_path), ManualClock(T0 + 10 * HOUR)
    lake = _lake(tmp_path, settings, clock)
    jobs = retrievals.JobStore(settings.data_dir)
    assert _readings(lake) == 6  # hour 2 only
    job = retrievals.create(settings=settings, lake=lake, jobs=jobs, request=rt.check_request(
        T0, T0 + 2 * HOUR, "standard"), now_ms=clock.now_ms())
    assert job.state is State.RESTORING and len(job.objects) == 2 and job.eta_s == 40
    assert {o.storage_class for o in job.objects} == {GLACIER, DEEP_ARCHIVE}
    assert all(o.requested and o.state is State.RESTORING for o in job.objects)
    assert job.cost_usd == round(sum(rt.restore_cost(o.storage_class, "standard", o.bytes) for o in job.objects), 6)
    stored = json.loads((settings.data_dir / "retrievals" / f"{job.id}.json").read_text())
    assert stored["state"] == "restoring" and stored["notified"] == {"mqtt": ""}
    recorder = Recorder()
    assert retrievals.deliver(jobs, [recorder]) == 1 and recorder.seen == [(job.id, "restoring")]
    assert retrievals.deliver(jobs, [recorder]) == 0  # told once

    clock.advance(20)  # GLACIER is done, DEEP_ARCHIVE not yet
    report = retrievals.follow(store=lake.store, jobs=jobs, now_ms=clock.now_ms())
    assert report == {"job": "retrieve", "changed": 0, "restores_requested": 0, "following": [job.id]}
    assert _readings(lake) == 12
    job = jobs.get(job.id)
    assert [o.state for o in job.objects] == [State.READY, State.RESTORING] and job.eta_s == 20
    clock.advance(20)
    assert retrievals.follow(store=lake.store, jobs=jobs, now_ms=clock.now_ms())["changed"] == 1
    job = jobs.get(job.id)
    assert job.state is State.READY and job.finished_at == clock.now_ms() and job.eta_s == 0
    assert job.readable_until == T0 + 10 * HOUR + 20_000 + 1_000_000  # the GLACIER copy goes first
    assert _readings(lake) == 18
    assert retrievals.deliver(jobs, [recorder]) == 1 and recorder.seen[-1] == (job.id, "ready")
    assert sum(lake.store.calls.values()) == 2  # one request per object, none while following

    clock.advance(1000)  # the copies expire: readings leaves them out again; the job stays ready
    assert _readings(lake) == 6
    assert jobs.get(job.id).state is State.READY


def test_overlapping_jobs_share_restores(tmp_path):
    settings, clock = _settings(tmp_path), ManualClock(T0 + 10 * HOUR)
    lake = _lake(tmp_path, settings, clock)
    jobs = retrievals.JobStore(settings.data_dir)
    first = retrievals.create(settings=settings, lake=lake, jobs=jobs,
                              request=rt.check_request(T0, T0 + HOUR, "bulk"), now_ms=clock.now_ms())
    clock.advance(1)
    second = retrievals.create(settings=settings, lake=lake, jobs=jobs,
                               request=rt.check_request(T0 + HOUR // 2, T0 + 2 * HOUR, "bulk"), now_ms=clock.now_ms())
    assert lake.store.calls == Counter({o.key: 1 for o in second.objects})
    shared = {o.key: o for o in second.objects}[first.objects[0].key]
    assert (shared.requested, shared.state, shared.cost_usd) == (False, State.RESTORING, 0)
    assert second.cost_usd == round(rt.restore_cost(DEEP_ARCHIVE, "bulk", second.objects[1].bytes), 6)
    clock.advance(60)  # GLACIER bulk
    retrievals.follow(store=lake.store, jobs=jobs, now_ms=clock.now_ms())
    assert jobs.get(first.id).state is State.READY and jobs.get(second.id).state is State.RESTORING
    clock.advance(60)  # DEEP_ARCHIVE bulk
    retrievals.follow(store=lake.store, jobs=jobs, now_ms=clock.now_ms())
    assert jobs.get(second.id).state is State.READY
    # A third over a restored range asks nothing and is ready at once.
    third = retrievals.create(settings=settings, lake=lake, jobs=jobs,
                              request=rt.check_request(T0, T0 + 2 * HOUR, "standard"), now_ms=clock.now_ms())
    assert third.state is State.READY and third.cost_usd == 0
    assert sum(lake.store.calls.values()) == 2
    assert [j.id for j in jobs.jobs()] == [first.id, second.id, third.id]


def test_an_object_that_expires_fails_its_job_once_the_others_are_restored(tmp_path):
    settings, clock = _settings(tmp_path), ManualClock(T0 + 10 * HOUR)
    lake = _lake(tmp_path, settings, clock)
    jobs = retrievals.JobStore(settings.data_dir)
    job = retrievals.create(settings=settings, lake=lake, jobs=jobs,
                            request=rt.check_request(T0, T0 + 2 * HOUR, "standard"), now_ms=clock.now_ms())
    gone = next(o.key for o in job.objects if o.storage_class == GLACIER)
    lake.store.delete(gone)  # the lifecycle's expiry
    retrievals.follow(store=lake.store, jobs=jobs, now_ms=clock.now_ms())
    job = jobs.get(job.id)
    assert job.state is State.RESTORING  # the other object is still being restored
    assert {o.key: o.state for o in job.objects}[gone] is State.FAILED
    clock.advance(40)
    retrievals.follow(store=lake.store, jobs=jobs, now_ms=clock.now_ms())
    job = jobs.get(job.id)
    assert job.state is State.FAILED
    assert gone in job.message and "no longer exists" in job.message and "other 1 are readable" in job.message
    assert _readings(lake) == 12  # the DEEP_ARCHIVE hour is readable all the same


def test_a_copy_that_expires_before_its_job_is_ready_is_restored_again(tmp_path):
    settings, clock = _settings(tmp_path, keep_restored="10s"), ManualClock(T0 + 10 * HOUR)
    lake = _lake(tmp_path, settings, clock)
    jobs = retrievals.JobStore(settings.data_dir)
    job = retrievals.create(settings=settings, lake=lake, jobs=jobs,
                            request=rt.check_request(T0, T0 + 2 * HOUR, "standard"), now_ms=clock.now_ms())
    glacier = next(o.key for o in job.objects if o.storage_class == GLACIER)
    clock.advance(20)
    retrievals.follow(store=lake.store, jobs=jobs, now_ms=clock.now_ms())
    clock.advance(20)  # DEEP_ARCHIVE ready now; the GLACIER copy expired at 30 s
    retrievals.follow(store=lake.store, jobs=jobs, now_ms=clock.now_ms())
    job = jobs.get(job.id)
    assert job.state is State.RESTORING and lake.store.calls[glacier] == 2
    glacier_object = {o.key: o for o in job.objects}[glacier]
    assert glacier_object.state is State.RESTORING
    assert glacier_object.cost_usd == round(2 * rt.restore_cost(GLACIER, "standard", glacier_object.bytes), 6)


def test_a_crash_after_the_job_is_written_is_finished_by_the_follower(tmp_path):
    settings, clock = _settings(tmp_path), ManualClock(T0 + 10 * HOUR)
    lake = _lake(tmp_path, settings, clock, crash_on_restore=True)
    jobs = retrievals.JobStore(settings.data_dir)
    with pytest.raises(KeyboardInterrupt):
        retrievals.create(settings=settings, lake=lake, jobs=jobs,
                          request=rt.check_request(T0, T0 + HOUR, "expedited"), now_ms=clock.now_ms())
    [job] = jobs.jobs()
    assert job.state is State.PENDING and job.eta_s == 2
    # A restart: new store and job store objects over the same directories.
    restarted = CountingStore(tmp_path / "lake", clock=clock, restore_times=settings.retrieval.local_restore_seconds)
    jobs = retrievals.JobStore(settings.data_dir)
    report = retrievals.follow(store=restarted, jobs=jobs, now_ms=clock.now_ms())
    assert report["restores_requested"] == 1 and jobs.get(job.id).state is State.RESTORING
    clock.advance(2)
    retrievals.follow(store=restarted, jobs=jobs, now_ms=clock.now_ms())
    assert jobs.get(job.id).state is State.READY and sum(restarted.calls.values()) == 1


def test_refused_requests_store_nothing(tmp_path):
    settings, clock = _settings(tmp_path), ManualClock(T0 + 10 * HOUR)
    lake = _lake(tmp_path, settings, clock)
    jobs = retrievals.JobStore(settings.data_dir)
    with pytest.raises(rt.RetrievalError, match="DEEP_ARCHIVE, which has no expedited retrieval"):
        retrievals.create(settings=settings, lake=lake, jobs=jobs,
                          request=rt.check_request(T0, T0 + 2 * HOUR, "expedited"), now_ms=clock.now_ms())
    assert jobs.jobs() == [] and not lake.store.calls
    with pytest.raises(rt.UnknownJob, match="fabtier retrieve --list"):
        jobs.get("20250101T000000Z-abcdef")
    assert jobs.load("../../etc/passwd") is None


def test_a_failed_notice_is_sent_again_and_only_configured_notifiers_are_told(tmp_path):
    settings, clock = _settings(tmp_path), ManualClock(T0 + 10 * HOUR)
    lake = _lake(tmp_path, settings, clock)
    jobs = retrievals.JobStore(settings.data_dir)
    job = retrievals.create(settings=settings, lake=lake, jobs=jobs,
                            request=rt.check_request(T0, T0 + HOUR, "standard"), now_ms=clock.now_ms())
    recorder = Recorder(fail=1)
    webhook = Recorder()
    webhook.name = "webhook"  # not configured when the job was made: not told
    assert retrievals.deliver(jobs, [recorder, webhook]) == 0
    assert retrievals.deliver(jobs, [recorder, webhook]) == 1
    assert recorder.seen == [(job.id, "restoring")] and webhook.seen == []
    assert jobs.get(job.id).notified == {"mqtt": "restoring"}


def test_the_mqtt_notice_is_retained_on_the_jobs_topic(broker, tmp_path):
    settings = settings_from_mapping({"data_dir": str(tmp_path / "data"),
                                      "broker": {"url": broker.url, "jobs_root": "fab-jobs-t"}}, env={})
    [mqtt] = notify.build_notifiers(settings)
    job = {"id": "20251124T160000Z-abcdef", "state": "restoring", "objects": [], "bytes": 0, "eta_s": 0,
           "cost_usd": 0.0}
    mqtt.notify(job)
    mqtt.notify({**job, "state": "ready"})
    # A subscriber that comes afterwards gets the last state: the message is retained.
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "fab-jobs-t/retrievals/#",
                          "-C", "1", "-W", "10", "-v"], capture_output=True, text=True, timeout=20)
    topic, _, payload = out.stdout.strip().partition(" ")
    assert topic == "fab-jobs-t/retrievals/20251124T160000Z-abcdef" and json.loads(payload)["state"] == "ready"
    unreachable = notify.MqttJobNotifier(url="mqtt://127.0.0.1:1", jobs_root="x", client_id="t", timeout=1)
    with pytest.raises(notify.NotifyError, match="cannot reach the MQTT broker"):
        unreachable.notify(job)


def test_the_webhook_notice(tmp_path):
    received: list[tuple[dict, dict]] = []
    answers = [500, 204]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), json.loads(body)))
            self.send_response(answers.pop(0))
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        settings = settings_from_mapping({"data_dir": str(tmp_path), "retrieval": {"webhook_url": url}},
                                         env={"FABTIER_RETRIEVAL_WEBHOOK_TOKEN": "s3cret"})
        assert notify.notifier_names(settings) == ["mqtt", "webhook"]
        webhook = notify.build_notifiers(settings)[1]
        job = {"id": "20251124T160000Z-abcdef", "state": "ready"}
        with pytest.raises(notify.NotifyError, match="HTTP 500"):
            webhook.notify(job)
        webhook.notify(job)
        headers, body = received[-1]
        assert body == job and headers["Idempotency-Key"] == "20251124T160000Z-abcdef:ready"
        assert headers["Authorization"] == "Bearer s3cret"
    finally:
        server.shutdown()
        server.server_close()


def test_retrieval_settings_are_checked():
    from core.errors import ConfigError

    defaults = settings_from_mapping({}, env={})
    assert (defaults.retrieval.poll_every, defaults.retrieval.speed, defaults.retrieval.keep_restored) == (
        30.0, "standard", 7 * 86400.0)
    assert defaults.broker.jobs_root == "fab-jobs"
    assert defaults.retrieval.local_restore_seconds(GLACIER, "bulk") == 12 * 3600
    env = settings_from_mapping({}, env={"FABTIER_RETRIEVAL_SPEED": "bulk", "FABTIER_RETRIEVAL_POLL_EVERY": "2s"})
    assert (env.retrieval.speed, env.retrieval.poll_every) == ("bulk", 2.0)
    for document, words in [({"retrieval": {"speed": "fast"}}, "[retrieval] speed: 'fast' is not a retrieval speed"),
                             ({"retrieval": {"poll_every": "0s"}}, "[retrieval] poll_every: must be longer than zero"),
                             ({"retrieval": {"keep_restored": "0s"}}, "[retrieval] keep_restored"),
                             ({"retrieval": {"webhook_url": "ftp://x"}}, "[retrieval] webhook_url"),
                             ({"retrieval": {"webhook_token": "x"}}, "FABTIER_RETRIEVAL_WEBHOOK_TOKEN"),
                             ({"broker": {"jobs_root": "fab"}}, "overlap")]:
        with pytest.raises(ConfigError) as refused:
            settings_from_mapping(document, env={})
        assert words in str(refused.value), (document, str(refused.value))
