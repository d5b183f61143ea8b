"""The settings object and its sections: frozen dataclasses with their defaults. Pure data.

Every field carries its kind (duration, size, URL, ...) in its metadata, which the loader
(`fabtier.config`) uses to convert and check TOML and environment values and to say the fix.
Secrets are `Secret`s and never print.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.units import parse_duration, parse_size


class Secret:
    """A string that prints as *** so that it never reaches a log."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


def _kind(kind: str, default: Any, env_only: bool = False) -> Any:
    return field(default=default, metadata={"kind": kind, "env_only": env_only})


@dataclass(frozen=True)
class BrokerSettings:
    url: str = _kind("mqtt_url", "mqtt://127.0.0.1:1883")
    username: str = _kind("str", "")
    # Never in the file: FABTIER_BROKER_PASSWORD, or read from password_file at load.
    password: Secret = _kind("secret", Secret(""), env_only=True)
    password_file: str = _kind("file", "")
    # mqtts:// only: the CA bundle that signed the broker's certificate (empty: the system's
    # CAs), and the client certificate and its key (PEM) for a broker that requires one.
    ca_file: str = _kind("file", "")
    cert_file: str = _kind("file", "")
    key_file: str = _kind("file", "")
    topic_root: str = _kind("topic", "fab")
    ctx_root: str = _kind("topic", "fab-ctx")
    alert_root: str = _kind("topic", "fab-alerts")
    # Retrieval jobs are announced on {jobs_root}/retrievals/{id} (retained, QoS 1).
    jobs_root: str = _kind("topic", "fab-jobs")
    # A stable client id is what makes the broker keep our session (and its queued QoS 1
    # messages) while fabtier is down.
    client_id: str = _kind("str", "fabtier-ingest")
    session_expiry: float = _kind("duration", parse_duration("1d"))
    # Scale-out: processes with the same share_group split the stream between them
    # (MQTT 5 shared subscriptions); each needs its own client_id, data_dir and writer_id.
    share_group: str = _kind("name_or_empty", "")
    receive_maximum: int = _kind("count", 1000)
    keepalive: float = _kind("duration", 30.0)


@dataclass(frozen=True)
class HotSettings:
    window: float = _kind("duration", parse_duration("1h"))
    memory_budget: int = _kind("size", parse_size("2GiB"))


@dataclass(frozen=True)
class IngestSettings:
    max_future: float = _kind("duration", parse_duration("15m"))
    max_late: float = _kind("duration", parse_duration("7d"))
    max_payload: int = _kind("size", parse_size("1MiB"))
    # Group commit: the log is fsynced at most this often, and every message written
    # before the fsync is acknowledged after it.
    commit_interval: float = _kind("duration", 0.005)
    # Backpressure: past this much unsealed data in memory, acknowledgements are held back,
    # so the broker (which sends at most receive_maximum unacknowledged messages) pauses
    # delivery until the seal job catches up. Past half of it, a seal starts at once.
    max_unsealed: int = _kind("size", parse_size("2GiB"))


@dataclass(frozen=True)
class ColdSettings:
    store: str = _kind("store_url", "")
    endpoint_url: str = _kind("http_url", "")
    seal_every: float = _kind("duration", parse_duration("1m"))
    # Seal in a forked child process (Linux), so that sorting and encoding a segment does
    # not take the interpreter lock from ingestion; false: in a thread of this process.
    seal_in_child: bool = _kind("bool", True)
    # Part of every object key this process writes, so that scaled-out ingestors never
    # overwrite each other's files.
    writer_id: str = _kind("name", "w0")
    # S3 only: the region, and the server-side encryption every put asks for.
    region: str = _kind("name", "us-east-1")
    sse: str = _kind("sse", "AES256")
    kms_key_id: str = _kind("str", "")
    # Compaction: an hour's small files are merged once the hour ended this long ago, into
    # files of about compact_target (S3 archive classes charge per object, Athena wants
    # 128 MB+); a file already that big is left alone. A merge holds its readings in
    # memory: about 25 bytes per reading, some 2.5 GiB for 128 MiB of Parquet.
    compact_after: float = _kind("duration", parse_duration("2h"))
    compact_target: int = _kind("size", parse_size("128MiB"))


@dataclass(frozen=True)
class WarmSettings:
    retention: float = _kind("duration", parse_duration("90d"))
    # Periods of the warm tier's scheduled jobs (lifecycle/jobs.py).
    rollup_every: float = _kind("duration", parse_duration("1m"))
    age_out_every: float = _kind("duration", parse_duration("1h"))


@dataclass(frozen=True)
class TimestreamSettings:
    """Amazon Timestream for LiveAnalytics sink (tiers/timestream.py); off by default."""

    enabled: bool = _kind("bool", False)
    database: str = _kind("str", "fabtier")
    table: str = _kind("str", "readings")
    region: str = _kind("str", "us-east-1")
    endpoint_url: str = _kind("http_url", "")
    memory_retention: float = _kind("duration", parse_duration("24h"))
    magnetic_retention: float = _kind("duration", parse_duration("90d"))
    measure_name: str = _kind("str", "sensors")
    # Readings waiting for the sink; when full, newer readings skip the sink (the lake keeps them).
    queue_readings: int = _kind("count", 1_000_000)
    max_attempts: int = _kind("count", 8)


@dataclass(frozen=True)
class InfluxSettings:
    """The same sink for InfluxDB line protocol over HTTP (Timestream for InfluxDB, or any)."""

    enabled: bool = _kind("bool", False)
    url: str = _kind("http_url", "")
    api: str = _kind("str", "v2")                # v2: /api/v2/write (org, bucket); v1: /write (database)
    org: str = _kind("str", "")
    bucket: str = _kind("str", "fabtier")
    database: str = _kind("str", "fabtier")
    token: Secret = _kind("secret", Secret(""))  # v2: API token; v1: "user:password"
    measurement: str = _kind("str", "readings")
    batch_lines: int = _kind("count", 5000)
    queue_readings: int = _kind("count", 1_000_000)
    max_attempts: int = _kind("count", 8)


@dataclass(frozen=True)
class LifecycleSettings:
    glacier_after: float = _kind("duration", parse_duration("90d"))
    deep_archive_after: float = _kind("duration", parse_duration("365d"))
    expire_after: float = _kind("duration", parse_duration("2555d"))
    # Objects smaller than this never go to an archive class (S3's own default since 2024:
    # 128 KB); fabtier raises it further where archiving a small object would cost more
    # than it saves (lifecycle.policy.break_even_size).
    min_object_size: int = _kind("size", parse_size("128KiB"))
    # false: archive every object above min_object_size, even where it costs more than it
    # saves (tests carry tiny objects through every class in seconds).
    cost_guard: bool = _kind("bool", True)
    # How often the scheduler compacts, archives/expires and updates the Glue catalog.
    run_every: float = _kind("duration", parse_duration("10m"))


@dataclass(frozen=True)
class RetrievalSettings:
    """Bringing archived raw objects back on request (`fabtier retrieve`, lifecycle/retrievals.py)."""

    # How often the scheduler follows the open retrieval jobs (the `retrieve` job).
    poll_every: float = _kind("duration", 30.0)
    # The speed when a request names none: S3's retrieval tier (expedited, standard, bulk).
    speed: str = _kind("speed", "standard")
    # How long a restored copy stays readable once the restore is done. S3 takes whole days
    # (RestoreObject's Days), so it is rounded up there; a local store keeps it exactly.
    keep_restored: float = _kind("duration", parse_duration("7d"))
    # POST every state change of a job as JSON here (besides MQTT {jobs_root}/retrievals/{id}).
    webhook_url: str = _kind("http_url", "")
    webhook_token: Secret = _kind("secret", Secret(""), env_only=True)
    webhook_timeout: float = _kind("duration", 5.0)
    # A local store has no archive of its own: it makes a restore take this long, per class
    # and speed. Defaults: S3's typical times, the upper ends (GLACIER expedited 1-5 min,
    # standard 3-5 h, bulk 5-12 h; DEEP_ARCHIVE standard 12 h, bulk 48 h; it has no expedited).
    local_glacier_expedited: float = _kind("duration", parse_duration("5m"))
    local_glacier_standard: float = _kind("duration", parse_duration("5h"))
    local_glacier_bulk: float = _kind("duration", parse_duration("12h"))
    local_deep_archive_standard: float = _kind("duration", parse_duration("12h"))
    local_deep_archive_bulk: float = _kind("duration", parse_duration("48h"))

    def local_restore_seconds(self, storage_class: str, speed: str) -> float | None:
        """How long a local store takes to restore an object of this class at this speed
        (None: the class has no such speed, as DEEP_ARCHIVE has no expedited)."""
        name = f"local_{storage_class.lower()}_{speed}"
        return getattr(self, name, None) if name in _RESTORE_TIMES else None


_RESTORE_TIMES = frozenset({"local_glacier_expedited", "local_glacier_standard", "local_glacier_bulk",
                            "local_deep_archive_standard", "local_deep_archive_bulk"})


@dataclass(frozen=True)
class GlueSettings:
    """The AWS Glue Data Catalog entry of the lake, for Athena; empty database: none."""

    database: str = _kind("glue_name", "")
    table: str = _kind("glue_name", "readings")
    endpoint_url: str = _kind("http_url", "")


@dataclass(frozen=True)
class ApiSettings:
    host: str = _kind("str", "127.0.0.1")
    port: int = _kind("port", 8080)
    token: Secret = _kind("secret", Secret(""))
    # What one SQL statement may hold in memory (DuckDB spills to {data_dir}/tmp beyond it,
    # or fails with its message), so that a heavy query cannot starve the ingestor.
    sql_memory_limit: int = _kind("size", parse_size("4GiB"))
    # The operators' dashboard (`fabtier dashboard`, a process of its own) listens on this port
    # of the same host; the API's `GET /` sends a browser there.
    dashboard_port: int = _kind("port", 8090)


@dataclass(frozen=True)
class AlertSettings:
    # Recipe master data (TOML, or JSON by its name); empty: no recipe limits. Reloaded
    # while running when the file changes (checked every recipes_reload).
    recipes: str = _kind("str", "")
    recipes_reload: float = _kind("duration", 2.0)
    # Flap damping: the (flap_max + 1)-th raise of a rule on a sensor within flap_window is
    # held raised until the sensor stays inside for a whole flap_window. 0 turns it off.
    flap_window: float = _kind("duration", parse_duration("5m"))
    flap_max: int = _kind("whole", 3)
    # A failing sink retries with backoff doubling up to this; alerts wait in the outbox.
    retry_max: float = _kind("duration", 30.0)
    webhook_url: str = _kind("http_url", "")
    webhook_token: Secret = _kind("secret", Secret(""), env_only=True)
    webhook_timeout: float = _kind("duration", 5.0)
    sns_topic_arn: str = _kind("str", "")
    sns_region: str = _kind("str", "")
    sns_endpoint_url: str = _kind("http_url", "")


@dataclass(frozen=True)
class AlertRule:
    name: str
    sensor: str
    high: float | None = None
    low: float | None = None
    for_seconds: float = 0.0
    hysteresis: float = 0.0  # for a recipe rule: a fraction of the step's tolerance
    recipe: bool = False  # limits from the recipe step the machine runs, not high/low

    def matches(self, machine: str, sensor: str) -> bool:
        return fnmatch.fnmatchcase(f"{machine}/{sensor}", self.sensor)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = _kind("path", Path("./fabtier-data"))
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    hot: HotSettings = field(default_factory=HotSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    cold: ColdSettings = field(default_factory=ColdSettings)
    warm: WarmSettings = field(default_factory=WarmSettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    glue: GlueSettings = field(default_factory=GlueSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    timestream: TimestreamSettings = field(default_factory=TimestreamSettings)
    influx: InfluxSettings = field(default_factory=InfluxSettings)
    alert_rules: tuple[AlertRule, ...] = ()
    alerts: AlertSettings = field(default_factory=AlertSettings)

    @property
    def store_url(self) -> str:
        """The cold store; empty means the local lake under the data directory."""
        return self.cold.store or (self.data_dir.resolve() / "lake").as_uri()

    @property
    def api_url(self) -> str:
        return f"http://{self.api.host}:{self.api.port}"
