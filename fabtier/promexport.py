"""`GET /metrics/prometheus`: the figures of `GET /metrics` in Prometheus' text format, written
by prometheus_client. Pure: `exposition(figures)` takes the dict /metrics answers, so that
both always show the same numbers and this is tested without a server.

Counters are the pipeline's running totals (`fabtier_readings_stored_total`: ingest rates are
`rate(...)` of them); gauges are what holds now (backpressure, unsealed bytes, backlogs).
A figure /metrics does not carry (an older or a partly open pipeline) is left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
PREFIX = "fabtier_"

# /metrics key -> help text; each a running total since the instance started.
COUNTERS: Mapping[str, str] = {
    "messages": "MQTT messages taken",
    "readings_stored": "readings stored (after the duplicate check)",
    "duplicates_dropped": "readings dropped as duplicates",
    "quarantined": "messages quarantined",
    "context_events": "lot context events taken",
    "acked": "messages acknowledged to the broker (durable)",
    "commits": "group commits (fsyncs) of the write-ahead log",
    "segments_sealed": "log segments sealed into the lake",
    "rows_sealed": "readings sealed into the lake",
    "seal_failures": "log segments whose seal failed",
    "internal_errors": "unexpected errors in the ingest path",
    "backpressure_commits": "group commits whose acknowledgements were held back",
    "alert_events": "alert events decided",
}
# /metrics key -> help text; each what holds at the scrape.
GAUGES: Mapping[str, str] = {
    "backpressure": "1 while acknowledgements are held back (unsealed data over [ingest] max_unsealed)",
    "unsealed_rows": "readings durable in the log, not sealed yet",
    "unsealed_bytes": "memory held by unsealed readings",
    "max_unsealed_bytes": "[ingest] max_unsealed: backpressure above it",
    "inbox": "messages waiting for the ingest thread",
    "acks_withheld": "acknowledgements held back",
    "hot_ring_rows": "readings in the hot ring",
    "wal_segment": "the active write-ahead log segment",
}
STATES = ("created", "recovering", "ready", "stopping", "stopped", "failed")
# The alert service's figures (/metrics `alerts`).
ALERT_COUNTERS: Mapping[str, str] = {
    "raised": "alerts raised", "cleared": "alerts cleared",
    "late_readings": "readings older than one already judged for an open excursion",
    "recipe_reloads": "recipe master data reloads", "recipe_reload_errors": "recipe reloads that failed",
}
ALERT_GAUGES: Mapping[str, str] = {"open": "alerts raised and not cleared", "rules": "alert rules loaded",
                                   "recipe_versions": "recipe versions loaded"}
# Per alert sink (MQTT, webhook, SNS, log) and per time-series sink (Timestream, InfluxDB).
ALERT_SINK_COUNTERS: Mapping[str, str] = {"delivered": "alert events delivered",
                                          "failures": "failed deliveries of alert events"}
ALERT_SINK_GAUGES: Mapping[str, str] = {"backlog": "alert events decided, not delivered yet"}
SINK_COUNTERS: Mapping[str, str] = {
    "sent_records": "records the sink took", "rejected_records": "records the sink refused",
    "failed_records": "records given up after retries", "retries": "retried writes",
    "dropped_readings": "readings that skipped the sink (queue full)",
}
SINK_GAUGES: Mapping[str, str] = {"queued_readings": "readings waiting for the sink (its backlog)"}
_QUANTILES = (("p50", "0.5"), ("p99", "0.99"), ("max", "1"))


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _plain(figures: Mapping[str, Any]) -> Iterator[Metric]:
    for key, text in COUNTERS.items():
        value = _number(figures.get(key))
        if value is not None:
            yield CounterMetricFamily(PREFIX + key, text, value=value)
    for key, text in GAUGES.items():
        value = _number(figures.get(key))
        if value is not None:
            yield GaugeMetricFamily(PREFIX + key, text, value=value)
    state = figures.get("state")
    if isinstance(state, str):
        family = GaugeMetricFamily(PREFIX + "state", "the run state: 1 for the one it is in", labels=["state"])
        for name in dict.fromkeys((*STATES, state)):
            family.add_metric([name], 1.0 if name == state else 0.0)
        yield family


def _steps(figures: Mapping[str, Any]) -> Iterator[Metric]:
    job_failures = figures.get("job_failures")
    if isinstance(job_failures, Mapping):
        failures = CounterMetricFamily(PREFIX + "job_failures", "failed runs of each tiering job", labels=["job"])
        for job, count in job_failures.items():
            if _number(count) is not None:
                failures.add_metric([str(job)], float(count))
        yield failures
    failing = figures.get("failing_steps")
    if isinstance(failing, list):
        yield GaugeMetricFamily(PREFIX + "failing_steps", "steps failing now (/health degraded while above 0)",
                                value=len(failing))
        family = GaugeMetricFamily(PREFIX + "step_failing", "1 for each step failing now", labels=["step"])
        for step in failing:
            family.add_metric([str(step)], 1.0)
        yield family


def _per_sink(sinks: object, name: str, counters: Mapping[str, str],
              gauges: Mapping[str, str]) -> Iterator[Metric]:
    if not isinstance(sinks, Mapping):
        return
    kinds: list[tuple[str, str, type[CounterMetricFamily] | type[GaugeMetricFamily]]] = [
        *((k, t, CounterMetricFamily) for k, t in counters.items()),
        *((k, t, GaugeMetricFamily) for k, t in gauges.items())]
    for key, text, kind in kinds:
        family = kind(f"{PREFIX}{name}_{key}", text, labels=["sink"])
        for sink, stats in sinks.items():
            value = _number(stats.get(key)) if isinstance(stats, Mapping) else None
            if value is not None:
                family.add_metric([str(sink)], value)
        yield family


def _alerts(alerts: object) -> Iterator[Metric]:
    if not isinstance(alerts, Mapping):
        return
    for key, text in ALERT_COUNTERS.items():
        value = _number(alerts.get(key))
        if value is not None:
            yield CounterMetricFamily(f"{PREFIX}alerts_{key}", text, value=value)
    for key, text in ALERT_GAUGES.items():
        value = _number(alerts.get(key))
        if value is not None:
            yield GaugeMetricFamily(f"{PREFIX}alerts_{key}", text, value=value)
    latency = alerts.get("decided_to_durable_ms")
    if isinstance(latency, Mapping):
        family = GaugeMetricFamily(PREFIX + "alert_decided_to_durable_ms",
                                   "recent alert events: decision to durable in the log, ms", labels=["quantile"])
        for key, quantile in _QUANTILES:
            value = _number(latency.get(key))
            if value is not None:
                family.add_metric([quantile], value)
        yield family
    yield from _per_sink(alerts.get("sinks"), "alert_sink", ALERT_SINK_COUNTERS, ALERT_SINK_GAUGES)


class _Figures(Collector):
    def __init__(self, figures: Mapping[str, Any]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        yield from _plain(self.figures)
        yield from _steps(self.figures)
        yield from _per_sink(self.figures.get("sinks"), "sink", SINK_COUNTERS, SINK_GAUGES)
        yield from _alerts(self.figures.get("alerts"))


def exposition(figures: Mapping[str, Any]) -> bytes:
    """The text exposition of `figures` (the dict GET /metrics answers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(figures))
    return generate_latest(registry)
