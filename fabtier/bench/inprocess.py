"""A pipeline in the bench's own process, fed the simulator's stream without a broker
(`Pipeline.process`, as the ingest thread calls it), for the benches that time one part of
the path in isolation (`bench seal`, `bench sql`)."""

from __future__ import annotations

import time
from pathlib import Path

from fabtier.broker import free_port
from fabtier.config import settings_from_mapping
from fabtier.ingestion import MICRO_BATCH, Message
from fabtier.pipeline import Pipeline
from simulator.model import SimConfig
from simulator.publisher import generate_messages


def open_pipeline(data_dir: Path) -> Pipeline:
    """A pipeline over `data_dir` that seals only when told (`seal_every` an hour), opened: its
    ring warmed from the (empty) lake, as an instance's."""
    settings = settings_from_mapping({"data_dir": str(data_dir), "api": {"port": free_port()},
                                      "cold": {"seal_every": "1h"}}, env={})
    pipeline = Pipeline(settings)
    pipeline.open()
    return pipeline


def simulated_stream(machines: int, sensors: int, rate_hz: float, seconds: float, seed: int) -> list[Message]:
    """The simulator's messages (batches of 500 readings) for the `seconds` up to now, made
    before anything is timed."""
    end_ms = int(time.time() * 1000)
    config = SimConfig(machines, sensors, rate_hz, seed=seed)
    return [(topic, payload, 1, i) for i, (topic, payload) in enumerate(
        generate_messages(config, end_ms - int(seconds * 1000), end_ms, batch=500))]


def feed(pipeline: Pipeline, messages: list[Message]) -> None:
    """`messages` through the pipeline in micro-batches, committed and acknowledged."""
    for i in range(0, len(messages), MICRO_BATCH):
        pipeline.process(messages[i:i + MICRO_BATCH])
    pipeline.ingestor.commit_and_ack()
