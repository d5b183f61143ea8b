"""The fab simulator: a deterministic model of a wafer fab's sensors and lots, and a load
generator that publishes it over MQTT as the ingest pipeline expects (CONTRACT.md 1-2).

- `simulator.catalog`: master data (machine kinds, sensors, recipes).
- `simulator.model`: pure, seeded model; `FabModel.advance(until_ms)` yields readings and
  lot/wafer context events.
- `simulator.payloads`: pure conversion of model output to MQTT (topic, payload) pairs.
- `simulator.publisher`: real-time publishing (`run_simulator`) and the same stream without
  clock or network (`generate_messages`).
"""

from .model import Anomaly, ContextEvent, FabModel, ReadingBlock, SimConfig
from .publisher import BrokerError, SimStats, generate_messages, publish_stream, run_simulator

__all__ = [
    "publish_stream",
    "Anomaly",
    "BrokerError",
    "ContextEvent",
    "FabModel",
    "ReadingBlock",
    "SimConfig",
    "SimStats",
    "generate_messages",
    "run_simulator",
]
