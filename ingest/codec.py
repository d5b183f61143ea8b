"""Payload codec: one MQTT message into a columnar batch, or a reason to quarantine it.

Pure: no I/O, no clock of its own (the caller passes `now_ms`). The rules are those of
CONTRACT.md sections 1 and 2; a message is accepted whole or quarantined whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import orjson

from ingest.arrayscan import NameTable, float64s, int64s, name_codes, strings
from ingest.layoutcache import SelfLimitingCache

MAX_NAME_BYTES = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_INT64_MAX = 2**63 - 1


class PayloadError(ValueError):
    """The message breaks the contract; `reason` is what the quarantine records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SensorNames:
    """A machine's set of sensor names, checked once, in sorted order: what a batch's codes
    index. Shared by every interleaving of the same names (a gateway that sends its sensors
    in arrival order sends a new sequence in nearly every message), and so is what the
    ingest path keeps for them: the key id of each name, per machine and key table."""

    __slots__ = ("names", "index", "key_cache", "_scan_table", "wal_names")

    def __init__(self, distinct: frozenset[str]) -> None:
        for name in distinct:
            _check_name("sensor", name)
        self.names = sorted(distinct)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.key_cache: dict[tuple[int, str], np.ndarray] = {}  # (key table, machine) -> id of each name
        self._scan_table: NameTable | None = None
        # The names as the log's records of readings write them (ingest.walformat fills it):
        # once per set, not per message.
        self.wal_names: bytes | None = None

    def scan_table(self) -> NameTable:
        """The names as `ingest.arrayscan` looks them up in a payload's bytes; built when first asked."""
        if self._scan_table is None:
            self._scan_table = NameTable(self.names, self.index)
        return self._scan_table


class SensorLayout:
    """The sensor column of a batch, analysed once and reused: gateways send the same
    interleaving of sensors in message after message, so each distinct sequence of names is
    read into codes once (and the hot ring writes the rows from the codes as they come)."""

    __slots__ = ("names", "name_set", "codes", "key_cache")

    def __init__(self, names: SensorNames, codes: np.ndarray) -> None:
        self.names = names.names
        self.name_set = names
        self.key_cache = names.key_cache
        self.codes = codes


_LAYOUTS: SelfLimitingCache[SensorLayout] = SelfLimitingCache(4096)
_NAME_SETS: dict[frozenset[str], SensorNames] = {}
_NAME_SETS_MAX = 4096  # about one a machine type in a fab; beyond it (hostile input), start again
# Per machine, the names of its last new layout: its next message most likely has the same set
# in another order, and looking its names up there spares building and hashing a frozenset of
# them (the fab-scale stream, where every message is a new layout: 3 % of the ingest process's
# samples in a py-spy profile).
_MACHINE_NAMES: dict[str, SensorNames] = {}
_MACHINE_NAMES_MAX = 1 << 16  # beyond it (hostile input: a new machine each message), start again


class _PlainBatch(msgspec.Struct, forbid_unknown_fields=True):
    """A batch as gateways send it: the arrays of timestamps and of names as the payload's JSON
    (read by `ingest.arrayscan`), numbers. What does not decode so goes the general way."""

    ts: msgspec.Raw
    sensor: msgspec.Raw
    v: msgspec.Raw  # `ingest.arrayscan.float64s`, or `_NUMBERS` where it does not read them


_PLAIN_BATCH = msgspec.json.Decoder(_PlainBatch)
_NUMBERS = msgspec.json.Decoder(list[float])
# Layouts by the bytes of a payload's array of names (`_decode_plain_batch`): as `_LAYOUTS`.
_RAW_LAYOUTS: SelfLimitingCache[SensorLayout] = SelfLimitingCache(4096)


@dataclass(slots=True)
class ReadingBatch:
    """Readings of one machine: sensor i is `sensor_names[sensor_codes[i]]`."""

    machine: str
    sensor_names: list[str]
    sensor_codes: np.ndarray  # uint32
    ts: np.ndarray  # int64 epoch milliseconds, UTC
    value: np.ndarray  # float64
    layout: SensorLayout | None = None

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(slots=True, frozen=True)
class ContextEvent:
    """A lot starting or ending on a machine (CONTRACT.md section 2)."""

    ts: int
    machine: str
    event: str
    lot: str
    wafer: str
    recipe: str
    # The recipe version in effect when the run started; set by the pipeline from the
    # recipe master data, never by the payload.
    recipe_version: str | None = None


@dataclass(slots=True, frozen=True)
class Limits:
    max_future_ms: int
    max_late_ms: int
    max_payload: int


def _check_name(what: str, name: str) -> None:
    if not name:
        raise PayloadError(f"empty {what} in topic")
    if "" in name.split("/"):
        raise PayloadError(f"empty level in {what} {name!r}")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise PayloadError(f"{what} name longer than {MAX_NAME_BYTES} bytes")


def parse_ts(raw: object) -> int:
    """Epoch milliseconds from an integer or an ISO-8601 string with a UTC offset."""
    if type(raw) is int:
        if not -_INT64_MAX <= raw <= _INT64_MAX:
            raise PayloadError("ts out of range")
        return raw
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise PayloadError(f"ts {raw[:40]!r} is not ISO-8601") from None
        if moment.tzinfo is None:
            raise PayloadError(f"ts {raw[:40]!r} has no UTC offset")
        # Sub-millisecond digits are cut, not rounded: the reading belongs to its millisecond.
        return (moment - _EPOCH) // _MS
    raise PayloadError(f"ts must be epoch milliseconds or an ISO-8601 string, not {type(raw).__name__}")


def _check_value(raw: object) -> float:
    # exact types (a bool is no number here), tested one by one so that type checkers narrow
    if type(raw) is not int and type(raw) is not float:
        raise PayloadError(f"v must be a number, not {type(raw).__name__}")
    value = float(raw)
    if not math.isfinite(value):
        raise PayloadError("v is not finite")
    return value


def _check_size(payload: bytes, limits: Limits) -> None:
    if len(payload) > limits.max_payload:
        raise PayloadError(f"payload of {len(payload)} bytes is over the limit of {limits.max_payload}")


def _load_json(payload: bytes, limits: Limits) -> object:
    _check_size(payload, limits)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"payload is not valid JSON ({exc})") from None


def _check_time_window(ts: np.ndarray, now_ms: int, limits: Limits) -> None:
    if len(ts) == 0:
        return
    _check_window(int(ts.max()), int(ts.min()), now_ms, limits)


def _check_window(newest: int, oldest: int, now_ms: int, limits: Limits) -> None:
    if newest > now_ms + limits.max_future_ms:
        raise PayloadError(f"ts {newest} is more than max_future ahead of the pipeline clock")
    if oldest < now_ms - limits.max_late_ms:
        raise PayloadError(f"ts {oldest} is more than max_late behind the pipeline clock")


def _decode_single(machine: str, sensor: str, doc: object) -> ReadingBatch:
    if not isinstance(doc, dict):
        raise PayloadError("payload must be a JSON object")
    if isinstance(doc.get("ts"), list) or "sensor" in doc:
        raise PayloadError("a batch on a single-reading topic")
    if set(doc) != {"ts", "v"}:
        missing = {"ts", "v"} - set(doc)
        if missing:
            raise PayloadError(f"missing field {sorted(missing)[0]}")
        raise PayloadError(f"unknown field {sorted(set(doc) - {'ts', 'v'})[0]}")
    ts = parse_ts(doc["ts"])
    value = _check_value(doc["v"])
    return ReadingBatch(
        machine=machine,
        sensor_names=[sensor],
        sensor_codes=np.zeros(1, dtype=np.uint32),
        ts=np.array([ts], dtype=np.int64),
        value=np.array([value], dtype=np.float64),
    )


def _decode_batch(machine: str, doc: object) -> ReadingBatch:
    if not isinstance(doc, dict):
        raise PayloadError("payload must be a JSON object")
    if set(doc) != {"ts", "sensor", "v"}:
        if set(doc) == {"ts", "v"}:
            raise PayloadError("a single reading on a machine topic")
        missing = {"ts", "sensor", "v"} - set(doc)
        if missing:
            raise PayloadError(f"missing field {sorted(missing)[0]}")
        raise PayloadError(f"unknown field {sorted(set(doc) - {'ts', 'sensor', 'v'})[0]}")
    raw_ts, raw_sensor, raw_v = doc["ts"], doc["sensor"], doc["v"]
    if not (isinstance(raw_ts, list) and isinstance(raw_sensor, list) and isinstance(raw_v, list)):
        raise PayloadError("a batch needs ts, sensor and v as arrays")
    n = len(raw_ts)
    if n != len(raw_sensor) or n != len(raw_v):
        raise PayloadError(f"batch arrays of unequal lengths ({n}, {len(raw_sensor)}, {len(raw_v)})")
    if n == 0:
        raise PayloadError("empty batch")

    value_types = set(map(type, raw_v))
    if not value_types <= {int, float}:
        bad = sorted(t.__name__ for t in value_types - {int, float})
        raise PayloadError(f"v must hold numbers, found {', '.join(bad)}")
    value = np.array(raw_v, dtype=np.float64)
    if not np.isfinite(value).all():
        raise PayloadError("v holds a value that is not finite")

    ts_types = set(map(type, raw_ts))
    if ts_types == {int}:
        try:
            ts = np.array(raw_ts, dtype=np.int64)
        except OverflowError:
            raise PayloadError("ts out of range") from None
    else:
        ts = np.fromiter((parse_ts(t) for t in raw_ts), dtype=np.int64, count=n)

    try:
        pattern = tuple(raw_sensor)
        layout = _LAYOUTS.get(pattern)
    except TypeError:
        raise PayloadError("sensor must hold strings") from None
    if layout is None:
        layout = _new_layout(machine, raw_sensor)
        _LAYOUTS.put(pattern, layout)
    return ReadingBatch(
        machine=machine,
        sensor_names=layout.names,
        sensor_codes=layout.codes,
        ts=ts,
        value=value,
        layout=layout,
    )


def _decode_plain_batch(machine: str, payload: bytes) -> ReadingBatch | None:
    """The batch of a payload that holds exactly `ts` (plain integers), `sensor` (the machine's
    last set of names, `_MACHINE_NAMES`, each written plainly; or strings, in a machine's first
    batch) and `v` (finite numbers), as
    long as each other; None for anything else, which `_decode_batch` then accepts or refuses
    with its reason. What this accepts, `_decode_batch` accepts the same (the property tests
    compare them), for less: no Python string is made of a name nor a Python int of a
    timestamp, and no type is checked in Python (msgspec checks the numbers as it reads)."""
    try:
        doc = _PLAIN_BATCH.decode(payload)
        raw_values = bytes(doc.v)
        value = float64s(raw_values)  # plain decimals, exactly; finite by construction
        if value is None:
            numbers = _NUMBERS.decode(raw_values)
            value = np.fromiter(numbers, dtype=np.float64, count=len(numbers))  # msgspec checked each
            if not np.isfinite(value).all():
                return None
    except msgspec.DecodeError:  # a ValidationError too
        return None
    n = len(value)
    ts = int64s(bytes(doc.ts), n) if n else None
    if ts is None:
        return None
    raw = bytes(doc.sensor)
    layout = _RAW_LAYOUTS.get(raw)
    if layout is None:
        names = _MACHINE_NAMES.get(machine)
        if names is None:
            # The machine's first batch: its names read here, as `_decode_batch` would make its
            # layout, without reading the whole payload again as Python objects there (at a
            # fab's 1,000 machines, one message in six of the first second of data).
            listed = strings(raw, n)
            if listed is None:
                return None
            layout = _new_layout(machine, listed)
        else:
            found = name_codes(raw, names.scan_table(), n)
            # Only the machine's whole set of names (a batch's names are its distinct sensors).
            if found is None or found[1] != len(names.names):
                return None
            layout = SensorLayout(names, found[0])
        _RAW_LAYOUTS.put(raw, layout)
    elif len(layout.codes) != n:
        return None
    return ReadingBatch(machine=machine, sensor_names=layout.names, sensor_codes=layout.codes, ts=ts, value=value,
                        layout=layout)


def _new_layout(machine: str, raw_sensor: list) -> SensorLayout:
    layout = _layout_of_known_names(machine, raw_sensor)
    if layout is not None:
        return layout
    distinct = frozenset(raw_sensor)  # hashable: the caller made a tuple of it
    names = _NAME_SETS.get(distinct)
    if names is None:
        if not all(type(name) is str for name in distinct):
            raise PayloadError("sensor must hold strings")
        names = SensorNames(distinct)
        if len(_NAME_SETS) >= _NAME_SETS_MAX:
            _NAME_SETS.clear()
        _NAME_SETS[distinct] = names
    codes = _codes(names, raw_sensor)
    if len(_MACHINE_NAMES) >= _MACHINE_NAMES_MAX:
        _MACHINE_NAMES.clear()
    _MACHINE_NAMES[machine] = names
    return SensorLayout(names, codes)


def _layout_of_known_names(machine: str, raw_sensor: list) -> SensorLayout | None:
    """The layout of `raw_sensor` over the machine's last set of names, if it is exactly that
    set (every name in it, every one of it present: a batch's names are its distinct
    sensors); else None. The names were checked when the set was first seen."""
    names = _MACHINE_NAMES.get(machine)
    if names is None or len(raw_sensor) < len(names.names):
        return None
    try:  # a name not in the set (or not a string, which no set holds)
        codes = _codes(names, raw_sensor)
    except KeyError:
        return None
    # Every name of the set among them, or the batch has a set of its own.
    return SensorLayout(names, codes) if len(set(raw_sensor)) == len(names.names) else None


def _codes(names: SensorNames, raw_sensor: list) -> np.ndarray:
    """Each row's name as its index in `names` (KeyError: a name not among them)."""
    return np.fromiter(map(names.index.__getitem__, raw_sensor), dtype=np.uint32, count=len(raw_sensor))


class SingleReading(tuple):
    """(machine, sensor, ts, value) of a message on a single-reading topic: no arrays, so
    that many of them are cheap to gather into one columnar batch."""

    __slots__ = ()


def _below_root(topic: str, root: str) -> str:
    # `{root}/#` also matches `{root}` itself, and the caller may hand over any topic: cutting
    # `len(root) + 1` characters blindly made `fab-ctx` (matched by `fab-ctx/#`) a reading of
    # machine "ctx" under the root `fab`.
    if not topic.startswith(root + "/"):
        raise PayloadError(f"topic {topic[:80]!r} has no machine level under {root}/")
    return topic[len(root) + 1:]


def decode_message(topic: str, payload: bytes, *, root: str, now_ms: int,
                   limits: Limits) -> ReadingBatch | SingleReading:
    """Like `decode_readings`, but a single reading comes back as a plain `SingleReading`."""
    rest = _below_root(topic, root)
    machine, _, sensor = rest.partition("/")
    if not sensor and not rest.endswith("/"):
        return decode_readings(topic, payload, root=root, now_ms=now_ms, limits=limits)
    _check_name("machine", machine)
    _check_name("sensor", sensor)
    doc = _load_json(payload, limits)
    if not isinstance(doc, dict):
        raise PayloadError("payload must be a JSON object")
    if len(doc) != 2 or type(doc.get("ts")) is not int or type(doc.get("v")) is not float:
        batch = _decode_single(machine, sensor, doc)  # the exact checks and their reasons
        ts, value = int(batch.ts[0]), float(batch.value[0])
    else:
        ts, value = doc["ts"], doc["v"]
        if not math.isfinite(value):
            raise PayloadError("v is not finite")
    if not now_ms - limits.max_late_ms <= ts <= now_ms + limits.max_future_ms:
        # Compared as Python ints: on the fast path `ts` is any integer orjson reads (up to
        # 2**64 - 1), which an int64 array refuses with an OverflowError.
        _check_window(ts, ts, now_ms, limits)
        raise PayloadError("ts out of range")
    return SingleReading((machine, sensor, ts, value))


def decode_readings(topic: str, payload: bytes, *, root: str, now_ms: int, limits: Limits) -> ReadingBatch:
    """Decode a message on `{root}/{machine}` (a batch) or `{root}/{machine}/{sensor}` (one reading)."""
    rest = _below_root(topic, root)
    machine, _, sensor = rest.partition("/")
    _check_name("machine", machine)
    if sensor or rest.endswith("/"):
        doc = _load_json(payload, limits)
        _check_name("sensor", sensor)
        batch = _decode_single(machine, sensor, doc)
    else:
        _check_size(payload, limits)
        plain = _decode_plain_batch(machine, payload)
        batch = plain if plain is not None else _decode_batch(machine, _load_json(payload, limits))
    _check_time_window(batch.ts, now_ms, limits)
    return batch


def decode_context(topic: str, payload: bytes, *, root: str, now_ms: int, limits: Limits) -> ContextEvent:
    """Decode a lot start or end on `{ctx_root}/{machine}`."""
    machine = _below_root(topic, root)
    if "/" in machine:
        raise PayloadError("a context topic has exactly one level after the root")
    _check_name("machine", machine)
    doc = _load_json(payload, limits)
    if not isinstance(doc, dict):
        raise PayloadError("payload must be a JSON object")
    fields = {"ts", "event", "lot", "wafer", "recipe"}
    missing = fields - set(doc)
    if missing:
        raise PayloadError(f"missing field {sorted(missing)[0]}")
    if set(doc) - fields:
        raise PayloadError(f"unknown field {sorted(set(doc) - fields)[0]}")
    if doc["event"] not in ("start", "end"):
        raise PayloadError("event must be 'start' or 'end'")
    for key in ("lot", "wafer", "recipe"):
        if not isinstance(doc[key], str) or not doc[key]:
            raise PayloadError(f"{key} must be a non-empty string")
    ts = parse_ts(doc["ts"])
    _check_time_window(np.array([ts], dtype=np.int64), now_ms, limits)
    return ContextEvent(ts=ts, machine=machine, event=doc["event"], lot=doc["lot"],
                        wafer=doc["wafer"], recipe=doc["recipe"])


def batches_by_machine(machines: list[str], sensors: list[str], codes: np.ndarray, ts: np.ndarray,
                       value: np.ndarray) -> list[ReadingBatch]:
    """Rows keyed by a (machine, sensor) table, as one ReadingBatch per machine."""
    key_machine = np.array(machines, dtype=object)
    batches = []
    for machine in dict.fromkeys(machines):
        keys = np.flatnonzero(key_machine == machine)
        local = np.full(len(machines), -1, dtype=np.int64)
        local[keys] = np.arange(len(keys))
        rows = np.flatnonzero(local[codes] >= 0)
        batches.append(ReadingBatch(machine, [sensors[k] for k in keys.tolist()],
                                    local[codes[rows]].astype(np.uint32), ts[rows], value[rows]))
    return batches
