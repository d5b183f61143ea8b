"""Backpressure with a store that fails: past `[ingest] max_unsealed` the pipeline stops
taking messages and withholds their acknowledgements (the broker keeps the rest), keeps
withholding while every seal fails, resumes once a seal succeeds, and every reading ends up
in the lake exactly once.

What this does NOT show: that the process's memory is bounded. The limit is checked against
the unsealed buffer's own count (`UnsealedData.bytes`: 21 bytes a reading for key id, ts,
value and flag), not against resident memory (the log's buffers, Arrow tables, the inbox,
paho's buffers, the allocator are not in it); bounding resident memory is issue 14.
"""

from __future__ import annotations

import json
import threading

from fabtier.pipeline import Pipeline
from fabtier.reader import query
from fabtier.runner import Instance
from tests.conftest import make_settings, mosquitto_pub, wait_for
from tiers.unsealed import BYTES_PER_CHUNK, BYTES_PER_READING

BATCH = 200
MESSAGES = 300
LIMIT = 100 * 1024  # [ingest] max_unsealed, in the unsealed buffer's count (tiers.unsealed.UnsealedData.bytes)
RECEIVE_MAXIMUM = 10


def test_past_max_unsealed_acks_are_withheld_until_a_seal_succeeds_and_nothing_is_lost(broker, tmp_path,
                                                                                       monkeypatch):
    # The ingest thread asks for a seal only when it finds itself over the limit and stops
    # taking messages (the committer asks too, from its own thread): that call says "stalled"
    # (or the committer's backpressure, below).
    stalled = threading.Event()
    seal_soon = Pipeline._seal_soon

    def seal_soon_seen(self: Pipeline) -> None:
        if threading.current_thread().name == "ingest":
            stalled.set()
        seal_soon(self)
    monkeypatch.setattr(Pipeline, "_seal_soon", seal_soon_seen)
    lake = tmp_path / "lake"
    settings = make_settings(tmp_path, broker, cold={"seal_every": "1s", "store": lake.as_uri()},
                             ingest={"max_unsealed": f"{LIMIT // 1024}KiB"},
                             broker={"receive_maximum": RECEIVE_MAXIMUM})
    instance = Instance(settings).start()
    pipeline = instance.pipeline
    metrics, ingestor = pipeline.metrics, pipeline.ingestor
    blocker = lake / "raw"
    blocker.write_text("a file where the store needs a directory: every seal fails")
    try:
        now = pipeline.clock.now_ms()
        batches, expected = [], set()
        for b in range(MESSAGES):  # 60,000 readings, 1.26 MB in the buffer's count: far over the limit
            ts = [now - 60_000 + b * BATCH + j for j in range(BATCH)]
            expected.update(("etch-03", "ch1/temp", t) for t in ts)
            batches.append(json.dumps({"ts": ts, "sensor": ["ch1/temp"] * BATCH, "v": [1.25] * BATCH}))
        mosquitto_pub(broker, "fab/etch-03", *batches)  # the broker takes them all

        # Stalled: past the limit nothing more is taken. The ingest thread says so when it finds
        # a message waiting over the limit; when it took every message the broker had sent (the
        # receive maximum, none acknowledged since), no more comes and only the committer's
        # withheld commit shows it (seen in CI: the ingest thread never had one to refuse).
        wait_for(lambda: stalled.is_set() or metrics.backpressure, what="the pipeline stopping at the limit")
        # Then whole group commits make its last micro-batch durable (acknowledgement withheld).
        commits = metrics.backpressure_commits
        wait_for(lambda: metrics.backpressure_commits >= commits + 2, what="a group commit that withheld acknowledgements after the stall")
        taken, acked, held = metrics.messages, metrics.acked, pipeline.unsealed.bytes
        withheld = ingestor.acks_withheld
        assert 0 < withheld == taken - acked and acked < taken < MESSAGES
        # The ingest thread stopped at the limit: over it by at most one micro-batch (which
        # is at most receive_maximum messages).
        # (its readings and, per appended batch, the arrays' own overhead: tiers.unsealed)
        assert LIMIT < held <= LIMIT + (BYTES_PER_READING * BATCH + BYTES_PER_CHUNK) * RECEIVE_MAXIMUM
        # ... and it stays stalled while the seal is retried and keeps failing, over many
        # group commits that each withheld the acknowledgements again.
        failures, commits = metrics.seal_failures, metrics.backpressure_commits
        wait_for(lambda: metrics.seal_failures >= failures + 2 and metrics.backpressure_commits >= commits + 20,
                 what="more failed seals and withheld commits")
        assert metrics.backpressure and metrics.messages == taken and metrics.acked == acked
        assert ingestor.acks_withheld == withheld and pipeline.unsealed.bytes == held
        assert pipeline.metrics_snapshot()["acks_withheld"] == withheld
        assert metrics.segments_sealed == 0

        blocker.unlink()  # the store recovers: the next seal succeeds, acknowledgements resume
        wait_for(lambda: metrics.acked >= MESSAGES, timeout=60, what="every message acknowledged")
        assert metrics.segments_sealed > 0 and not metrics.backpressure and ingestor.acks_withheld == 0
        assert metrics.messages == metrics.acked == MESSAGES  # each taken once, none left over
        table = query(settings, "SELECT machine, sensor, epoch_ms(ts) AS ms FROM readings")
        rows = list(zip(*(table.column(c).to_pylist() for c in ("machine", "sensor", "ms")), strict=True))
        assert len(rows) == len(set(rows)) == len(expected) and set(rows) == expected
    finally:
        instance.stop()
