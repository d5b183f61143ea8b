"""Faults of one machine, each made to happen for real under a running pipeline with a real
broker and QoS 1 publishers, then taken away: the pipeline recovers on its own and every
acknowledged reading is in `readings` exactly once.

- the log's disk is full (a small tmpfs on `wal/`): nothing more is acknowledged, `/health`
  says why, and ingestion goes on by itself once there is room;
- a write torn at the log's tail (a crash mid-append): recovery keeps every whole record,
  drops the torn bytes and says so;
- the pipeline clock jumps an hour forward and back while ingesting and sealing: nothing
  lost or doubled, sealing keeps the segments' order, `max_future`/`max_late` quarantine
  with a reason;
- the network between fabtier and the broker is cut for seconds (a proxy that resets the
  connections, or drops the bytes) while a publisher goes on: the persistent session keeps
  what was published meanwhile. (A broker restart is tested in
  test_scale_out_and_broker_restart.py.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fabtier.reader import _request, query
from fabtier.runner import Instance
from ingest.codec import ReadingBatch
from ingest.wal import LogFull
from ingest.walformat import encode_readings, intact_length
from tests.conftest import make_settings, mosquitto_pub, wait_for

MINUTE = 60_000
HOUR = 60 * MINUTE


# ---- helpers ----------------------------------------------------------------------------------
def _batches(machine: str, first_ts: int, count: int, size: int = 50) -> tuple[list[str], set]:
    """`count` columnar messages of `size` readings each (5 sensors), from `first_ts` on."""
    messages, keys = [], set()
    for b in range(count):
        ts = [first_ts + b * size + j for j in range(size)]
        sensors = [f"s{j % 5}" for j in range(size)]
        keys.update((machine, s, t) for s, t in zip(sensors, ts, strict=True))
        messages.append(json.dumps({"ts": ts, "sensor": sensors, "v": [float(j) for j in range(size)]}))
    return messages, keys


def _get(settings, path: str) -> dict:
    return json.loads(_request(settings, "GET", path, timeout=5)[1])


def _rows(settings) -> list[tuple[str, str, int]]:
    table = query(settings, "SELECT machine, sensor, epoch_ms(ts) AS ms FROM readings")
    return list(zip(*(table.column(c).to_pylist() for c in ("machine", "sensor", "ms")), strict=True))


def _assert_exactly_once(settings, expected: set) -> None:
    table = query(settings, "SELECT count(*) AS n, count(DISTINCT (machine, sensor, ts)) AS d FROM readings")
    n, d = table.column("n")[0].as_py(), table.column("d")[0].as_py()
    assert n == d == len(expected), (n, d, len(expected))
    assert set(_rows(settings)) == expected


def _wait_all(settings, expected: set, timeout: float = 40) -> None:
    wait_for(lambda: len(set(_rows(settings)) & expected) == len(expected), timeout=timeout,
             what=f"all {len(expected)} readings")
    time.sleep(0.5)  # a duplicate redelivery would arrive now


# ---- 1. the log's disk is full ------------------------------------------------------------------
@contextlib.contextmanager
def _small_filesystem(directory: Path, scratch: Path):
    """`directory` on a 2 MiB file system of its own: a tmpfs, else a loop-mounted ext2 image;
    skipped with the reason when this process may mount neither."""
    directory.mkdir(parents=True, exist_ok=True)
    tried = []
    attempts = [["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)]]
    image = scratch / "wal.img"
    if shutil.which("mkfs.ext2"):
        attempts.append(["mount", "-o", "loop", str(image), str(directory)])
    for command in attempts:
        if "loop" in command:
            with open(image, "wb") as handle:
                handle.truncate(2 << 20)
            made = subprocess.run(["mkfs.ext2", "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True)
            if made.returncode != 0:
                tried.append(f"mkfs.ext2: {made.stderr.strip()}")
                continue
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            break
        tried.append(f"{' '.join(command[:3])}: {done.stderr.strip() or done.returncode}")
    else:
        pytest.skip("needs a small file system of its own for the log (run as root): " + "; ".join(tried))
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def _fill(directory: Path) -> Path:
    """A file taking every free byte of `directory`'s file system."""
    path = directory / "filler"
    with open(path, "wb", buffering=0) as handle:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while handle.write(b"\0" * chunk):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        os.fsync(handle.fileno())
    return path


def test_a_full_log_disk_holds_acknowledgements_back_and_ingestion_resumes_when_there_is_room(broker, tmp_path):
    settings = make_settings(tmp_path, broker)
    wal = settings.data_dir / "wal"
    with _small_filesystem(wal, tmp_path):
        instance = Instance(settings).start()
        metrics = instance.pipeline.metrics
        try:
            now = instance.pipeline.clock.now_ms()
            first, expected = _batches("etch-11", now - 10 * MINUTE, 20)
            mosquitto_pub(broker, "fab/etch-11", *first)
            wait_for(lambda: metrics.acked == 20, what="the first part acknowledged")
            assert _get(settings, "/health")["status"] == "ready"

            filler = _fill(wal)  # the disk is full
            second, more = _batches("etch-11", now - 5 * MINUTE, 60)  # ~60 KiB: far more than a page
            expected |= more
            mosquitto_pub(broker, "fab/etch-11", *second)  # the broker has them; fabtier must not ack them
            wait_for(lambda: metrics.messages == 80, what="fabtier to take the second part")
            wait_for(lambda: _get(settings, "/health")["status"] == "degraded", what="/health to say degraded")
            health = _get(settings, "/health")
            assert health["state"] == "ready" and health["failure"] is None
            [problem] = health["problems"]
            assert problem["step"] == "write-ahead log"
            assert "No space left on device" in problem["message"] and str(wal) in problem["fix"]
            held = metrics.acked
            assert held < 80
            # No rotation either: the active segment stays active; a seal still seals what is
            # closed (which frees room on that disk) and does not fail.
            active = instance.pipeline.wal.active
            instance.pipeline.seal()
            assert instance.pipeline.wal.active == active
            time.sleep(1.0)  # the committer goes on trying meanwhile
            assert metrics.acked == held and not instance.pipeline.status.failed
            assert instance.pipeline.ingestor.acks_withheld == 0  # held in the log's memory, not withheld

            filler.unlink()  # room again: recovery on its own
            wait_for(lambda: metrics.acked == 80, what="every message acknowledged once there is room")
            wait_for(lambda: _get(settings, "/health")["status"] == "ready", what="/health ready again")
            _wait_all(settings, expected)
            _assert_exactly_once(settings, expected)
            # The segment holds every record whole: the failed writes were cut back.
            path = instance.pipeline.wal.path(instance.pipeline.wal.active)
            assert intact_length(path.read_bytes()) == path.stat().st_size
            assert instance.pipeline.seal().segments == 1
        finally:
            instance.stop()
        _assert_exactly_once(settings, expected)  # from the lake, after the last seal
    assert metrics.internal_errors == 0


def test_enospc_on_fsync_cuts_the_segment_back_and_keeps_everything_for_the_next_commit(tmp_path, monkeypatch):
    """A file system that reports a full disk only at fsync (delayed allocation, quotas): the
    same as on write, which tmpfs reports above."""
    from ingest.wal import WriteAheadLog, read_segment

    def record(n: int, first_ts: int) -> bytes:
        payload = json.loads(_batches("etch-12", first_ts, 1, size=n)[0][0])
        return encode_readings(_reading_batch("etch-12", payload))
    wal = WriteAheadLog(tmp_path)
    path = wal.path(wal.active)
    wal.append(record(3, 0), token=1)
    assert wal.commit() == [1]
    durable = path.stat().st_size
    full = True
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    wal.append(record(5, 100), token=2)
    with pytest.raises(LogFull):
        wal.commit()
    assert path.stat().st_size == durable and wal.dirty  # cut back; the record waits in memory
    with pytest.raises(LogFull):
        wal.rotate()
    assert wal.segments() == [wal.active]
    wal.append(record(7, 200), token=3)
    full = False
    assert wal.commit() == [2, 3]
    assert [len(r) for r in read_segment(path)] == [3, 5, 7]
    assert intact_length(path.read_bytes()) == path.stat().st_size
    wal.close()


# ---- 2. a torn write at the log's tail ------------------------------------------------------------
@pytest.mark.parametrize("tear", ["cut-record", "garbage"])
def test_a_write_torn_at_the_log_tail_is_dropped_and_every_acknowledged_reading_stays_once(
        broker, tmp_path, caplog, tear):
    settings = make_settings(tmp_path, broker)
    instance = Instance(settings).start()
    try:
        now = instance.pipeline.clock.now_ms()
        first, expected = _batches("cvd-02", now - 10 * MINUTE, 30)
        mosquitto_pub(broker, "fab/cvd-02", *first)
        wait_for(lambda: instance.pipeline.metrics.acked == 30, what="the first part acknowledged")
        instance.pipeline.stop(seal=False)  # the log keeps its segment, as after a crash
    finally:
        instance.stop()

    # Published while fabtier is down: the broker keeps them for its session.
    second, more = _batches("cvd-02", now - 5 * MINUTE, 30)
    expected |= more
    mosquitto_pub(broker, "fab/cvd-02", *second)

    # The crash happened in the middle of appending the second part's first message: the
    # segment ends in part of a record that was never made durable, never acknowledged.
    segments = sorted((settings.data_dir / "wal").glob("*.wal"))
    newest = segments[-1]
    whole = newest.read_bytes()
    assert intact_length(whole) == len(whole) > 100  # the first part's records
    if tear == "cut-record":
        payload = json.loads(second[0])
        torn = encode_readings(_reading_batch("cvd-02", payload))[:-7]
    else:
        torn = bytes((i * 37 + 11) % 256 for i in range(301))
    with open(newest, "ab") as handle:
        handle.write(torn)

    caplog.set_level(logging.WARNING, logger="fabtier.ingest")
    instance = Instance(settings).start()
    try:
        dropped = [r.getMessage() for r in caplog.records if "after the last whole record" in r.getMessage()]
        assert dropped == [f"log segment {newest.name}: {len(torn)} byte(s) after the last whole record (at byte "
                           f"{len(whole)}) are dropped: a write torn by a crash; nothing in them was acknowledged, "
                           "so the broker delivers it again"]
        _wait_all(settings, expected)
        _assert_exactly_once(settings, expected)
        assert instance.pipeline.metrics.internal_errors == 0
        assert not newest.exists()  # recovered: sealed into the lake, then deleted
    finally:
        instance.stop()
    _assert_exactly_once(settings, expected)


def _reading_batch(machine: str, payload: dict) -> ReadingBatch:
    import numpy as np

    names = sorted(set(payload["sensor"]))
    codes = np.array([names.index(s) for s in payload["sensor"]], dtype=np.uint32)
    return ReadingBatch(machine, names, codes, np.array(payload["ts"], dtype=np.int64),
                        np.array(payload["v"], dtype=np.float64))


# ---- 3. the clock jumps an hour forward and back --------------------------------------------------
class JumpingClock:
    """The system clock plus an offset the test moves, as NTP stepping a clock would."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


def test_the_clock_jumping_an_hour_forward_and_back_loses_doubles_and_reorders_nothing(broker, tmp_path):
    clock = JumpingClock()
    settings = make_settings(tmp_path, broker, ingest={"max_late": "90m", "max_future": "15m"})
    instance = Instance(settings, clock=clock).start()
    pipeline = instance.pipeline
    metrics = pipeline.metrics
    sealing = threading.Event()
    seal_errors: list[BaseException] = []

    def seal_all_along() -> None:
        while not sealing.wait(0.3):
            try:
                pipeline.seal()
            except BaseException as exc:  # reported by the test
                seal_errors.append(exc)
    sealer = threading.Thread(target=seal_all_along, name="test-sealer", daemon=True)
    sealer.start()
    sent = 0

    def publish(*messages: str) -> None:
        nonlocal sent
        mosquitto_pub(broker, "fab/litho-03", *messages)
        sent += len(messages)
        wait_for(lambda: metrics.messages == sent and metrics.acked == sent, what=f"{sent} messages acknowledged")
        pipeline.seal()  # besides the sealer's: each part in a segment of its own at least

    try:
        true_now = clock.now_ms()
        on_time, expected = _batches("litho-03", true_now - MINUTE, 20)
        publish(*on_time)

        clock.offset_ms = HOUR  # forward
        ahead, keys = _batches("litho-03", clock.now_ms() - 30_000, 20)
        expected |= keys
        publish(*ahead)
        publish(*on_time[:10])  # an hour behind now, inside max_late: duplicates, stored once
        too_late, _ = _batches("litho-03", true_now - 40 * MINUTE, 5)  # 1 h 40 min behind: quarantined
        publish(*too_late)

        clock.offset_ms = -HOUR  # back, an hour behind the true time
        behind, keys = _batches("litho-03", clock.now_ms() - 30_000, 20)
        expected |= keys
        publish(*behind)
        publish(*behind[:10])  # duplicates of readings older than the hot ring covers
        too_early, _ = _batches("litho-03", true_now, 5)  # an hour ahead now: quarantined
        publish(*too_early, *ahead[:5])

        clock.offset_ms = 0
        again, keys = _batches("litho-03", true_now + 10_000, 20)
        expected |= keys
        publish(*again, *behind[10:], *on_time[10:])  # the rest once more: all duplicates

        sealing.set()
        sealer.join()
        assert not seal_errors, seal_errors
        _assert_exactly_once(settings, expected)
        reasons = query(settings, "SELECT reason FROM quarantine").column("reason").to_pylist()
        assert sum("more than max_late behind the pipeline clock" in r for r in reasons) == len(too_late)
        assert sum("more than max_future ahead of the pipeline clock" in r for r in reasons) == \
            len(too_early) + len(ahead[:5])
        assert len(reasons) == len(too_late) + len(too_early) + 5
        assert metrics.internal_errors == 0 and metrics.seal_failures == 0
    finally:
        sealing.set()
        instance.stop()
    _assert_exactly_once(settings, expected)
    # Sealing kept the segments' order: each sealed once, in the order the log wrote them.
    sealed = []
    for line in (settings.data_dir / "audit" / "moves.jsonl").read_text().splitlines():
        move = json.loads(line)
        if move["job"] == "seal":  # raw, quarantine: a segment of duplicates alone moves nothing
            number = int(Path(move["source"]).stem)
            if not sealed or sealed[-1] != number:
                sealed.append(number)
    assert len(sealed) >= 5 and sealed == sorted(set(sealed)), sealed


# ---- 4. the network is cut between fabtier and the broker ------------------------------------------
class CuttableProxy:
    """A TCP proxy between fabtier and mosquitto that the test cuts: "reset" closes every
    connection at once and refuses new ones until the cut ends; "blackhole" keeps the
    connections but loses every byte on them (as a link that went dead), and closes them
    when the cut ends, as a peer would after such a loss."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[tuple[socket.socket, socket.socket]] = []
        self._cut = threading.Event()
        self._closed = threading.Event()
        self.connections = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, name="test-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                self.refused += 1
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            pair = (client, upstream)
            with self._lock:
                self._open.append(pair)
                self.connections += 1
            for src, dst in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair) -> None:
        try:
            while data := src.recv(65536):
                if not self._cut.is_set():  # on a cut link the bytes are lost
                    dst.sendall(data)
        except OSError:
            pass
        self._drop(pair)

    def _drop(self, pair) -> None:
        with self._lock:
            if pair in self._open:
                self._open.remove(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _drop_all(self) -> None:
        with self._lock:
            pairs = list(self._open)
        for pair in pairs:
            self._drop(pair)

    def cut(self, how: str) -> None:
        self._cut.set()
        if how == "reset":
            self._drop_all()

    def mend(self) -> None:
        self._drop_all()  # whatever lived through the cut lost bytes: it cannot go on
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        self._drop_all()


@pytest.mark.parametrize("how", ["reset", "blackhole"])
def test_a_network_cut_of_seconds_mid_stream_loses_and_doubles_nothing(broker, tmp_path, how):
    proxy = CuttableProxy(broker.port)
    settings = make_settings(tmp_path, broker, broker={"url": f"mqtt://127.0.0.1:{proxy.port}"})
    instance = Instance(settings).start()
    metrics = instance.pipeline.metrics
    try:
        now = instance.pipeline.clock.now_ms()
        messages, expected = _batches("etch-21", now - 10 * MINUTE, 120)

        def publish() -> None:  # straight to mosquitto, QoS 1, all along the cut
            for i in range(0, len(messages), 4):
                mosquitto_pub(broker, "fab/etch-21", *messages[i:i + 4])
                time.sleep(0.1)
        publisher = threading.Thread(target=publish, name="test-publisher")
        publisher.start()
        wait_for(lambda: metrics.acked >= 30, what="part of the stream acknowledged")
        proxy.cut(how)
        if how == "reset":
            wait_for(lambda: not instance.pipeline.subscriber.connected.is_set(), what="fabtier to see the cut")
        time.sleep(4.0)  # the cut; the publisher goes on
        proxy.mend()
        publisher.join()
        _wait_all(settings, expected)
        wait_for(lambda: metrics.acked >= len(messages), what="every message acknowledged")
        _assert_exactly_once(settings, expected)
        assert proxy.connections >= 2  # fabtier came back by itself, on its persistent session
        assert instance.pipeline.ready and metrics.internal_errors == 0
    finally:
        instance.stop()
        proxy.close()
    _assert_exactly_once(settings, expected)
