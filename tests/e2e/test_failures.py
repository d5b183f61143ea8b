"""Failures the README promises to handle, each made to happen for real:

- the write-ahead log cannot be made durable (fsync fails with EIO): ingestion stops for good,
  nothing more is acknowledged, `/health` says `failed`, `fabtier run` exits 1, and a restart
  recovers everything from the log and the broker;
- quarantine keeps the first 64 KiB of a payload (and says how much it left out);
- a second `fabtier run` on a data directory that a running one holds is refused (exit 2),
  and the running one goes on;
- a seal child that dies or hangs without an answer is replaced by a seal in this process;
- (a known bug, expected to fail) a seal child finalises garbage of its parent.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analytics.session import run_sql
from core.clock import ManualClock
from fabtier import forked, sealing
from fabtier.pipeline import Pipeline
from fabtier.reader import _request, query
from fabtier.runner import Instance
from ingest.assemble import QUARANTINE_PAYLOAD_LIMIT
from tests.conftest import (
    make_settings,
    mosquitto_pub,
    start_fabtier_run,
    wait_for,
    wait_ready,
    watch_seal_children,
    write_config,
)
from tiers.cold import ColdLake

HOUR = 3_600_000


def _get(settings, path: str) -> tuple[int, dict]:
    status, body = _request(settings, "GET", path, timeout=5)
    return status, json.loads(body)


def _rows(settings) -> list[tuple[str, str, int]]:
    table = query(settings, "SELECT machine, sensor, epoch_ms(ts) AS ms FROM readings")
    return list(zip(*(table.column(c).to_pylist() for c in ("machine", "sensor", "ms")), strict=True))


def _batch(machine_ts: int, n: int = 50) -> tuple[str, set]:
    ts = [machine_ts + i for i in range(n)]
    return json.dumps({"ts": ts, "sensor": ["ch1/temp"] * n, "v": [20.5] * n}), {("etch-09", "ch1/temp", t) for t in ts}


# ---- fsync fails: fail-stop ---------------------------------------------------------------
# `fabtier run` as the console script runs it (fabtier.cli.main), with two changes made before
# it starts: os.fsync raises EIO for the log's segment files once the file `trigger` exists (a
# disk that fails under a running instance), and the instance's stop waits until the file
# `seen` exists, so that the test can read /health between the failure and the exit.
_RUN_WITH_FAILING_FSYNC = r"""
import errno, os, sys, time
trigger, seen = sys.argv[1], sys.argv[2]
real_fsync = os.fsync
def fsync(fd):
    if os.path.exists(trigger) and os.readlink(f"/proc/self/fd/{fd}").endswith(".wal"):
        raise OSError(errno.EIO, "Input/output error (injected by the test)")
    real_fsync(fd)
os.fsync = fsync
from fabtier import runner
stop = runner.Instance.stop
def stop_once_seen(self):
    deadline = time.monotonic() + 60
    while not os.path.exists(seen) and time.monotonic() < deadline:
        time.sleep(0.02)
    stop(self)
runner.Instance.stop = stop_once_seen
from fabtier.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_a_failed_fsync_of_the_log_stops_ingestion_for_good_and_run_exits_1(broker, tmp_path):
    settings = make_settings(tmp_path, broker)
    config = write_config(settings, tmp_path / "fabtier.toml")
    trigger, seen = tmp_path / "fail-fsync-now", tmp_path / "health-seen"
    process = subprocess.Popen([sys.executable, "-c", _RUN_WITH_FAILING_FSYNC, str(trigger), str(seen),
                                "run", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(settings)
        now = int(time.time() * 1000)
        first, expected_first = _batch(now - 60_000)
        mosquitto_pub(broker, "fab/etch-09", first)
        wait_for(lambda: _get(settings, "/metrics")[1]["acked"] == 1, what="the first message acknowledged")

        trigger.touch()  # the disk fails
        second, expected_second = _batch(now - 30_000)
        mosquitto_pub(broker, "fab/etch-09", second)  # the broker has it; fabtier must not ack it
        wait_for(lambda: _get(settings, "/health")[1]["status"] == "failed", what="/health to say failed")
        status, health = _get(settings, "/health")
        assert status == 503 and health["status"] == "failed"
        assert "could not be made durable" in health["failure"] and "Errno 5" in health["failure"]
        metrics = _get(settings, "/metrics")[1]
        assert metrics["state"] == "failed" and metrics["messages"] == 2 and metrics["acked"] == 1
        seen.touch()
        out, _ = process.communicate(timeout=60)
    finally:
        seen.touch()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, out
    assert "fabtier: ingestion stopped: the write-ahead log could not be made durable" in out, out

    # A restart (with a disk that works) recovers from the log, and the broker delivers the
    # unacknowledged message again: every reading once.
    process = start_fabtier_run(config)
    try:
        wait_ready(settings)
        expected = expected_first | expected_second
        wait_for(lambda: set(_rows(settings)) >= expected, what="both messages after the restart")
        rows = _rows(settings)
        assert len(rows) == len(set(rows)) and set(rows) == expected
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out


# ---- quarantine keeps the first 64 KiB ----------------------------------------------------
def test_quarantine_keeps_the_first_64_kib_of_a_payload(broker, tmp_path):
    assert QUARANTINE_PAYLOAD_LIMIT == 64 * 1024
    sizes = (QUARANTINE_PAYLOAD_LIMIT - 1, QUARANTINE_PAYLOAD_LIMIT, QUARANTINE_PAYLOAD_LIMIT + 1, 100_000)
    payloads = {}
    for size in sizes:  # not JSON; each byte tells its position, so a cut in the wrong place shows
        head = f"not json, {size} bytes: ".encode()
        payloads[size] = (head + bytes(48 + (i % 75) for i in range(size - len(head))))
    settings = make_settings(tmp_path, broker)
    instance = Instance(settings).start()
    try:
        for size, payload in payloads.items():
            path = tmp_path / f"payload-{size}"
            path.write_bytes(payload)
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                            "-t", "fab/etch-09/ch1/temp", "-f", str(path)], check=True, timeout=30)
        wait_for(lambda: instance.pipeline.metrics.acked == len(sizes), what="every payload taken")
        live = query(settings, "SELECT reason, payload FROM quarantine").to_pylist()
    finally:
        instance.stop()  # seals the quarantine into the lake
    sealed = query(settings, "SELECT reason, payload FROM quarantine").to_pylist()
    assert list((tmp_path / "data" / "lake" / "quarantine").rglob("*.parquet"))
    kept = []
    for size, payload in payloads.items():
        text = payload[:QUARANTINE_PAYLOAD_LIMIT].decode()
        if size > QUARANTINE_PAYLOAD_LIMIT:
            text += f"... [{size - QUARANTINE_PAYLOAD_LIMIT} more bytes not kept]"
        kept.append(text)
    for rows in (live, sealed):  # from the log, and from the lake
        assert sorted(r["payload"] for r in rows) == sorted(kept)
        assert all(r["reason"].startswith("payload is not valid JSON") for r in rows), rows[0]["reason"]


# ---- one data directory, one running instance -----------------------------------------------
def test_a_second_run_on_the_same_data_directory_is_refused(broker, tmp_path):
    first = make_settings(tmp_path, broker)
    # The same data directory; another API port and client id, so that nothing but the data
    # directory could make it fail.
    second = make_settings(tmp_path, broker)
    assert second.data_dir == first.data_dir and second.api.port != first.api.port
    assert second.broker.client_id != first.broker.client_id
    process = start_fabtier_run(write_config(first, tmp_path / "first.toml"))
    try:
        wait_ready(first)
        identity = _get(first, "/health")[1]["data_dir_id"]
        refused = start_fabtier_run(write_config(second, tmp_path / "second.toml"))
        try:
            out, _ = refused.communicate(timeout=120)
        finally:
            if refused.poll() is None:
                refused.kill()
                refused.communicate()
        assert refused.returncode == 2, out
        assert "another fabtier process is using the data directory" in out, out
        assert "Traceback" not in out, out
        # The first one is untouched: same data directory, still ready, still ingesting.
        status, health = _get(first, "/health")
        assert status == 200 and health["data_dir_id"] == identity
        message, expected = _batch(int(time.time() * 1000) - 60_000)
        mosquitto_pub(broker, "fab/etch-09", message)
        wait_for(lambda: set(_rows(first)) == expected, what="the first instance to store a message")
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out


# ---- a lost seal child ----------------------------------------------------------------------
class DyingChildStore:
    """Passes everything to `inner`; a forked child ends itself (`how` = "dies": os._exit, as
    if killed), hangs (`how` = "hangs") or stops itself (`how` = "stops": SIGSTOP, until the
    parent kills it) before its `at`-th write or delete. The count of writes is a file, shared
    by the child and its parent."""

    def __init__(self, inner, *, at: int, how: str, ledger: Path) -> None:
        self.inner, self.at, self.how, self.ledger, self.owner = inner, at, how, ledger, os.getpid()
        self.url = inner.url
        ledger.write_bytes(b"")

    def _step(self) -> None:
        if os.getpid() != self.owner and self.ledger.stat().st_size == self.at:
            if self.how == "dies":
                os._exit(1)
            if self.how == "stops":
                os.kill(os.getpid(), signal.SIGSTOP)  # stays stopped until the parent kills it
            time.sleep(600)  # killed by the parent long before
        with open(self.ledger, "ab") as ledger:
            ledger.write(b"w")

    def put(self, key, data):
        self._step()
        self.inner.put(key, data)

    def delete(self, key):
        self._step()
        self.inner.delete(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _seal_one_segment(tmp_path: Path, store_for) -> tuple[Pipeline, dict, list[str]]:
    """A pipeline (sealing in a child) with readings of two hours in its log, sealed once with
    the store `store_for(inner)`; returns it (open), the readings, and the children's fates."""
    now = 1_800_000_000_000
    settings = make_settings(tmp_path, None, cold={"seal_in_child": True})
    pipeline = Pipeline(settings, clock=ManualClock(now))
    pipeline.open(warm=False)
    ts = [now - 2 * HOUR + i * 1000 for i in range(30)] + [now - HOUR + i * 1000 for i in range(30)]
    values = [20 + i / 4 for i in range(30)] + [0.1 * (i + 1) for i in range(30)]
    pipeline.process([("fab/etch-09", json.dumps({"ts": ts, "sensor": ["ch1/temp"] * 60, "v": values}).encode(),
                       0, 0)])
    pipeline.wal.commit()
    pipeline.lake = ColdLake(store_for(pipeline.lake.store), writer_id=pipeline.lake.writer_id)
    gc.collect()  # see test_a_seal_child_leaves_the_parents_garbage_alone: not the loss tested here
    with pytest.MonkeyPatch.context() as patch:
        fates = watch_seal_children(patch)
        report = pipeline.seal()
    assert report.segments == 1 and report.rows == 60
    return pipeline, {("etch-09", "ch1/temp", t): v for t, v in zip(ts, values, strict=True)}, fates


def _lake_state(pipeline: Pipeline) -> tuple[dict, list[str], set[str]]:
    sources = pipeline.sql_sources()
    table = run_sql(sources, "SELECT machine, sensor, epoch_ms(ts) AS ms, value FROM readings")
    rows = list(zip(*(table.column(c).to_pylist() for c in ("machine", "sensor", "ms", "value")), strict=True))
    assert len({r[:3] for r in rows}) == len(rows), "a reading is seen twice"
    store = pipeline.lake.store
    names = sorted(k.rsplit("/", 1)[-1] for k, _ in store.list("raw/"))
    audited = set(run_sql(sources, "SELECT target FROM tier_moves WHERE job = 'seal'").column("target").to_pylist())
    assert {f"{store.url}/{k}" for k, _ in store.list("raw/")} <= audited
    return {r[:3]: r[3] for r in rows}, names, audited


@pytest.mark.skipif(not forked.available(), reason="needs os.fork")
def test_a_lost_seal_child_is_replaced_by_a_seal_in_this_process(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sealing, "SEAL_CHILD_TIMEOUT", 2.0)  # a hung child is given up this soon
    clean, expected, fates = _seal_one_segment(tmp_path / "clean", lambda inner: inner)
    assert fates == ["answered"]
    readings, clean_names, _ = _lake_state(clean)
    assert readings == expected and len(clean_names) >= 2
    clean.close_offline()
    writes = len(clean_names)  # the child's writes: one file per hour and value encoding
    cases = [("dies", at) for at in range(writes)] + [("hangs", writes - 1)]
    for how, at in cases:
        run = tmp_path / f"{how}-{at}"
        caplog.clear()
        pipeline, expected, fates = _seal_one_segment(
            run, lambda inner, how=how, at=at, run=run: DyingChildStore(inner, at=at, how=how, ledger=run / "ledger"))
        assert fates == ["lost"], (how, at)
        assert "sealing it in this process" in caplog.text
        # Sealed here instead, in the same run: the log segment is gone, the child's partial
        # files replaced, every reading in the lake once, every file in the audit trail.
        assert pipeline.metrics.seal_failures == 0 and pipeline.metrics.segments_sealed == 1
        assert pipeline.wal.segments() == [pipeline.wal.active]
        readings, names, _ = _lake_state(pipeline)
        assert readings == expected and names == clean_names, (how, at, names)
        pipeline.close_offline()


@pytest.mark.skipif(not forked.available(), reason="needs os.fork")
def test_a_seal_child_leaves_the_parents_garbage_alone():
    import duckdb

    gc.collect()
    gc.disable()  # as between two automatic collections: garbage waits in the parent
    try:
        cycle: list = [duckdb.connect()]
        cycle[0].execute("SELECT 42").fetchall()  # a SQL session, as the API runs one per query
        cycle.append(cycle)  # unreachable once dropped, but only the cyclic collector frees it
        del cycle

        def seal_child() -> str:
            faulthandler.disable()  # the segfault is expected: no dump on the terminal
            gc.enable()
            gc.collect()  # the child allocates (boto3, pyarrow): its collector runs sooner or later
            return "answered"
        assert forked.call_in_fork(seal_child, timeout=60) == "answered"
    finally:
        gc.enable()
        gc.collect()
