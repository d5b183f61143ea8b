"""What the time-series sinks send, as pure functions of a batch of readings. No I/O.

Timestream for LiveAnalytics: one multi-measure record per (machine, ts) with one DOUBLE
measure per sensor, in requests of at most 100 records that share their common attributes
(the machine dimension, the measure name, MULTI, MILLISECONDS).
InfluxDB line protocol: one line per (machine, ts): `measurement,machine=M sensor=v,... ts`
with millisecond precision, escaped as the line protocol reference says.
"""

from __future__ import annotations

from collections import defaultdict

from ingest.codec import ReadingBatch

MAX_RECORDS_PER_REQUEST = 100  # Timestream WriteRecords' limit


def rows_by_time(batch: ReadingBatch) -> dict[int, list[tuple[str, float]]]:
    """{ts: [(sensor, value), ...]} in ts order; a sensor appears once per ts."""
    rows: dict[int, list[tuple[str, float]]] = defaultdict(list)
    names = batch.sensor_names
    for code, ts, value in zip(batch.sensor_codes.tolist(), batch.ts.tolist(), batch.value.tolist(),
                               strict=True):
        rows[ts].append((names[code], value))
    return dict(sorted(rows.items()))


def timestream_requests(batches: list[ReadingBatch], measure_name: str) -> list[tuple[dict, list[dict]]]:
    """(CommonAttributes, Records) per WriteRecords request: one machine per request, at
    most 100 multi-measure records each."""
    by_machine: dict[str, list[dict]] = defaultdict(list)
    for batch in batches:
        for ts, pairs in rows_by_time(batch).items():
            by_machine[batch.machine].append({
                "Time": str(ts),
                "MeasureValues": [{"Name": sensor, "Value": repr(value), "Type": "DOUBLE"}
                                  for sensor, value in pairs],
            })
    requests = []
    for machine, records in by_machine.items():
        common = {"Dimensions": [{"Name": "machine", "Value": machine, "DimensionValueType": "VARCHAR"}],
                  "MeasureName": measure_name, "MeasureValueType": "MULTI", "TimeUnit": "MILLISECONDS"}
        for start in range(0, len(records), MAX_RECORDS_PER_REQUEST):
            requests.append((common, records[start:start + MAX_RECORDS_PER_REQUEST]))
    return requests


def _escape(text: str, specials: str) -> str:
    text = text.replace("\\", "\\\\")
    for char in specials:
        text = text.replace(char, "\\" + char)
    return text


def escape_measurement(text: str) -> str:
    return _escape(text, ", ")


def escape_key(text: str) -> str:
    """Tag keys, tag values and field keys: commas, equals signs and spaces are escaped."""
    return _escape(text, ",= ")


def line_protocol(batches: list[ReadingBatch], measurement: str) -> list[str]:
    """One line per (machine, ts), fields named by sensor, timestamps in milliseconds."""
    lines = []
    head = escape_measurement(measurement)
    for batch in batches:
        tag = f"{head},machine={escape_key(batch.machine)}"
        for ts, pairs in rows_by_time(batch).items():
            fields = ",".join(f"{escape_key(sensor)}={value!r}" for sensor, value in pairs)
            lines.append(f"{tag} {fields} {ts}")
    return lines
