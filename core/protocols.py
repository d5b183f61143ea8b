"""The interfaces that packages share, as `typing.Protocol`s, in one place (shared/STYLE.md 1).

Each has a simple implementation that tests use: `core.clock.ManualClock`,
`tiers.store.LocalStore`, `alerts.sinks.LogSink`, `tiers.keys.SensorKeys`, the settings'
`AlertRule`.
"""

from __future__ import annotations

import builtins
from typing import Protocol

import pyarrow.fs as pafs

from core.records import AlertEvent, ObjectInfo, RestoreRequest


class Clock(Protocol):
    """Where ages and schedules take `now` from; tests move a ManualClock instead of sleeping."""

    def now_ms(self) -> int: ...


class Rule(Protocol):
    """What the engine needs of a rule (`core.settings.AlertRule` is one)."""

    # Read-only properties, so that a frozen dataclass such as AlertRule is one.
    @property
    def name(self) -> str: ...
    @property
    def high(self) -> float | None: ...
    @property
    def low(self) -> float | None: ...
    @property
    def for_seconds(self) -> float: ...
    @property
    def hysteresis(self) -> float: ...
    @property
    def recipe(self) -> bool: ...

    def matches(self, machine: str, sensor: str) -> bool: ...


class Keys(Protocol):
    """Dense sensor ids: `machines[i]`, `sensors[i]` name id i (`tiers.keys.SensorKeys`)."""

    machines: list[str]
    sensors: list[str]

    def __len__(self) -> int: ...

    def id_of(self, machine: str, sensor: str) -> int: ...


class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    # `builtins.list`: in this class body, `list` is the method above
    def list(self, prefix: str) -> builtins.list[tuple[str, int]]: ...
    def objects(self, prefix: str) -> builtins.list[ObjectInfo]: ...
    def set_storage_class(self, key: str, storage_class: str) -> None: ...
    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]: ...
    # Archived objects (GLACIER, DEEP_ARCHIVE): `info` describes one object with its restore
    # state (raises `ObjectMissing` when it does not exist); `restore` asks for a copy that
    # can be read for `keep_s` seconds once the restore is done, at `speed` (core.records
    # SPEEDS). A refusal that only says where the object stands is an answer, not an error.
    def info(self, key: str) -> ObjectInfo: ...
    def restore(self, key: str, *, keep_s: float, speed: str) -> RestoreRequest: ...


class AlertSink(Protocol):
    """A destination of alert events (MQTT, webhook, SNS, the log); `send` returns how many
    of the events went through, in order, and raises `alerts.sinks.SinkError` on the rest."""

    name: str

    def send(self, events: list[AlertEvent]) -> int: ...

    def close(self) -> None: ...
