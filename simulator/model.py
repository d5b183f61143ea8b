"""The fab model: what every sensor of every machine reads, and when lots run. Pure logic.

No I/O and no clock: the caller says how far simulated time goes (`FabModel.advance`), and
the same seed always gives the same readings, whatever the step sizes of the calls.

How a value is made, per sensor: the recipe step of the wafer being processed (or idle)
gives a setpoint and a tolerance; the process value follows the setpoint with a first-order
lag (solved exactly, so it does not depend on sampling); on top come a slow drift (an
Ornstein-Uhlenbeck process), Gaussian noise, process excursions (a spike or a ramp beyond
tolerance) and sensor faults (stuck value, dropout, glitch to near full scale). Values are
clipped to the transducer's range and rounded to its resolution.

Step-size independence comes from computing in fixed frames of simulated time (`frame_ms`:
about 64 readings per sensor, within 0.5..60 s) aligned to the start, each machine drawing
from its own random streams in a fixed order; `advance` hands out the buffered readings
whose nominal time is before its bound.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction

import numpy as np

from .catalog import MACHINE_KINDS, MachineKind, SensorKind


def frame_ms(rate_hz: float) -> int:
    """Frame length: long enough that per-frame overhead is negligible at low rates."""
    return max(500, min(60_000, round(64_000 / rate_hz)))

MAX_RATE_HZ = 1000.0  # one reading per ms: the finest period that keeps integer-ms ts distinct
_NOISE = 0.08  # Gaussian noise sd, in tolerances of the current step
_DRIFT = 0.2  # stationary sd of the drift, in tolerances
_DRIFT_TAU_MS = 600_000.0
_MS_PER_HOUR = 3_600_000.0


@dataclass(frozen=True)
class SimConfig:
    machines: int = 4
    sensors_per_machine: int = 5
    rate_hz: float = 10.0  # per sensor; at most MAX_RATE_HZ
    seed: int = 0
    start_ms: int | None = None  # None: whoever builds the model passes it
    excursion_rate: float = 4.0  # process excursions per sensor per hour
    fault_rate: float = 1.0  # sensor faults per sensor per hour
    jitter: float = 0.1  # max timestamp jitter as a fraction of the sampling period

    def __post_init__(self) -> None:
        if self.machines < 1 or self.sensors_per_machine < 1:
            raise ValueError("machines and sensors_per_machine must be >= 1")
        if not 0 < self.rate_hz <= MAX_RATE_HZ:
            raise ValueError(f"rate_hz must be in (0, {MAX_RATE_HZ:g}], got {self.rate_hz}")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.excursion_rate < 0 or self.fault_rate < 0 or not 0 <= self.jitter < 1:
            raise ValueError("rates must be >= 0 and jitter in [0, 1)")


@dataclass(frozen=True, eq=False)
class ReadingBlock:
    """One machine's readings of one `advance` call, sorted by ts."""

    machine: str
    names: np.ndarray  # object array of the machine's sensor names
    sensor_index: np.ndarray  # int32 index into names
    ts: np.ndarray  # int64 epoch ms UTC
    value: np.ndarray  # float64, already rounded to the sensor's resolution

    @property
    def sensor(self) -> np.ndarray:
        return self.names[self.sensor_index]

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True)
class ContextEvent:
    ts: int
    machine: str
    event: str  # "start" | "end"
    lot: str
    wafer: str
    recipe: str


@dataclass(frozen=True)
class Anomaly:
    """Ground truth of an injected excursion or fault (recorded on request)."""

    machine: str
    sensor: str
    category: str  # "excursion" | "fault"
    kind: str  # excursion: "spike" | "ramp"; fault: "stuck" | "dropout" | "glitch"
    # readings whose nominal time is in [start_ms, end_ms) are affected (exactly so when the
    # sampling period is a whole number of ms; otherwise to within a ms)
    start_ms: int
    end_ms: int


@dataclass
class _Segment:
    t0: int  # ms since the model's start
    t1: int
    sp: np.ndarray  # per sensor
    tol: np.ndarray


@dataclass
class _Active:
    sensor: int
    kind: str
    t0: float
    t1: float
    size: float  # tolerances (excursions) or fractions of full scale (glitch)
    value: float | None = field(default=None)  # a stuck sensor's frozen value


def sensor_layout(kind: MachineKind, count: int) -> list[tuple[str, SensorKind]]:
    """The first `count` sensors of a machine: catalog order, then chambers 2, 3, ..."""
    def name(k: SensorKind, chamber: int) -> str:
        return f"ch{chamber}/{k.quantity}" if k.chamber else k.quantity

    out = [(name(k, 1), k) for k in kind.sensors[:count]]
    per_chamber = kind.chamber_sensors
    for j in range(count - len(out)):
        k = per_chamber[j % len(per_chamber)]
        out.append((name(k, 2 + j // len(per_chamber)), k))
    return out


def run_tag(start_ms: int) -> str:
    """Four base-36 characters of the run's start second: two runs started within ~19 days of
    each other (so within one ISO week of lot numbers) never share a lot id."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    n = (start_ms // 1000) % 36**4
    return "".join(digits[(n // 36**k) % 36] for k in (3, 2, 1, 0))


class _Machine:
    def __init__(self, *, index: int, config: SimConfig, start_ms: int,
                 seeds: np.random.SeedSequence):
        self.kind = MACHINE_KINDS[index % len(MACHINE_KINDS)]
        self.name = f"{self.kind.prefix}-{index // len(MACHINE_KINDS) + 1:02d}"
        self.index, self.config, self.start_ms = index, config, start_ms
        self.frame_ms = frame_ms(config.rate_hz)
        layout = sensor_layout(self.kind, config.sensors_per_machine)
        self.names = np.array([n for n, _ in layout], dtype=object)
        kinds = [k for _, k in layout]
        self.kinds = dict(zip(self.names.tolist(), kinds, strict=True))
        self.tau = np.array([k.tau_s * 1000.0 for k in kinds])
        self.lo = np.array([k.lo for k in kinds])
        self.hi = np.array([k.hi for k in kinds])
        self.scale = np.array([10.0**k.decimals for k in kinds])
        # separate streams, so that e.g. changing the fault rate leaves everything else alone
        self.sched_rng, self.rng, exc_rng, fault_rng = (
            np.random.default_rng(s) for s in seeds.spawn(4))
        self.anomaly_rngs = {"excursion": exc_rng, "fault": fault_rng}
        self.idle_tol = np.array([k.idle[1] for k in kinds])
        # a sensor's calibration bias, folded into its setpoints
        self.bias = self.rng.normal(0.0, 0.1, len(kinds)) * self.idle_tol
        self.idle = self._setpoints({})
        self.steps = {r.name: [self._setpoints(s.setpoints) for s in r.steps]
                      for r in self.kind.recipes}
        self.pv = self.idle[0].copy()
        self.drift = self.rng.standard_normal(len(kinds))
        self.segments: deque[_Segment] = deque()
        self.horizon = 0
        self.events: deque[ContextEvent] = deque()
        self.program = self._program()
        self.active: list[_Active] = []
        self.pending: list[tuple[np.ndarray, ...]] = []  # (n, sensor, ts, value) per frame

    def _setpoints(self, step: dict[str, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.array([step.get(k.quantity, k.idle) for k in self.kinds.values()], dtype=float)
        return pairs[:, 0] + self.bias, pairs[:, 1]

    def _lot_id(self, number: int) -> str:
        when = datetime.fromtimestamp((self.start_ms + self.horizon) / 1000, tz=UTC)
        year, week, _ = when.isocalendar()
        return f"L{year % 100:02d}{week:02d}-{run_tag(self.start_ms)}-{number:02d}"

    def _program(self) -> Iterator[tuple[float, tuple[np.ndarray, np.ndarray], tuple | None]]:
        """Yields (duration ms, (setpoints, tolerances), context event at its start or None)."""
        rng = self.sched_rng
        yield rng.uniform(500, 5000), self.idle, None  # machines start a lot soon after start
        lot_count = 0
        while True:
            recipe = self.kind.recipes[rng.integers(len(self.kind.recipes))]
            # lot numbers interleave across machines, so they are unique in the fab
            lot = self._lot_id(lot_count * self.config.machines + self.index + 1)
            lot_count += 1
            wafers = 25 if rng.random() < 0.7 else int(rng.integers(5, 25))
            for w in range(1, wafers + 1):
                wafer = f"W{w:02d}"
                for j, step in enumerate(recipe.steps):
                    event = ("start", lot, wafer, recipe.name) if j == 0 else None
                    duration = step.seconds * 1000 * rng.uniform(0.97, 1.03)
                    yield duration, self.steps[recipe.name][j], event
                yield rng.uniform(3000, 8000), self.idle, ("end", lot, wafer, recipe.name)
            yield rng.uniform(10_000, 60_000), self.idle, None

    def _extend(self, until: int) -> None:
        while self.horizon < until:
            duration, (sp, tol), event = next(self.program)
            t1 = self.horizon + max(1, round(duration))
            self.segments.append(_Segment(self.horizon, t1, sp, tol))
            if event is not None:
                self.events.append(ContextEvent(self.start_ms + self.horizon, self.name, *event))
            self.horizon = t1

    def _spawn(self, a: int, period: float, log: list[Anomaly] | None) -> None:
        n_sensors, cfg = len(self.names), self.config
        for category, rate in (("excursion", cfg.excursion_rate), ("fault", cfg.fault_rate)):
            rng = self.anomaly_rngs[category]
            counts = rng.poisson(rate * self.frame_ms / _MS_PER_HOUR, n_sensors)
            for s in np.flatnonzero(counts).tolist():
                for _ in range(int(counts[s])):
                    t0 = a + rng.uniform(0, self.frame_ms)
                    sign = 1.0 if rng.random() < 0.5 else -1.0
                    if category == "excursion":
                        kind = "spike" if rng.random() < 0.5 else "ramp"
                        size = sign * rng.uniform(1.5, 6.0)
                        if kind == "spike":
                            length = int(rng.integers(1, 6)) * period
                        else:
                            length = max(3 * period, rng.uniform(2000, 30_000))
                    else:
                        kind = ("stuck", "dropout", "glitch")[rng.integers(3)]
                        size = sign * rng.uniform(0.2, 1.0)
                        length = {"stuck": rng.uniform(5000, 60_000),
                                  "dropout": rng.uniform(1000, 30_000), "glitch": period}[kind]
                    self.active.append(_Active(s, kind, t0, t0 + length, size))
                    if log is not None:
                        log.append(Anomaly(self.name, self.names[s], category, kind,
                                           self.start_ms + math.ceil(t0),
                                           self.start_ms + math.ceil(t0 + length)))

    def compute_frame(self, a: int, n: np.ndarray, t: np.ndarray, period: float,
                      jitter: float, log: list[Anomaly] | None) -> None:
        """Readings of frame [a, a + frame_ms): nominal indices `n`, times `t` (ms since start)."""
        b = a + self.frame_ms
        self._extend(b)
        rng, n_sensors, k = self.rng, len(self.names), len(t)
        x = np.empty((k, n_sensors))
        tol = np.empty((k, n_sensors))
        while self.segments[0].t1 <= a:
            self.segments.popleft()
        pv, pv_t, i0 = self.pv, float(a), 0
        for seg in self.segments:
            if seg.t0 >= b:
                break
            end = min(seg.t1, b)
            # rows are split by position, so every row gets a value even if float rounding
            # puts n * period a hair outside [a, b)
            i1 = k if end >= b else max(i0, int(np.searchsorted(t, end)))
            if i1 > i0:
                x[i0:i1] = seg.sp + (pv - seg.sp) * np.exp((pv_t - t[i0:i1, None]) / self.tau)
                tol[i0:i1] = seg.tol
            pv = seg.sp + (pv - seg.sp) * np.exp((pv_t - end) / self.tau)
            pv_t, i0 = float(end), i1
        self.pv = pv

        rho = math.exp(-self.frame_ms / _DRIFT_TAU_MS)
        d0 = self.drift
        self.drift = d0 * rho + math.sqrt(1 - rho * rho) * rng.standard_normal(n_sensors)
        w = (t - a) / self.frame_ms
        v = x + tol * (_DRIFT * (d0 + np.outer(w, self.drift - d0))
                       + _NOISE * rng.standard_normal((k, n_sensors)))

        self._spawn(a, period, log)
        keep = None
        spans = [(an, *np.searchsorted(t, [an.t0, an.t1])) for an in self.active]
        for an, i0, i1 in spans:
            s = an.sensor
            if an.kind == "spike":
                v[i0:i1, s] += an.size * tol[i0:i1, s]
            elif an.kind == "ramp":
                rise = np.minimum(1.0, (t[i0:i1] - an.t0) / (0.6 * (an.t1 - an.t0)))
                v[i0:i1, s] += an.size * tol[i0:i1, s] * rise
            elif an.kind == "glitch":
                v[i0:i1, s] += an.size * (self.hi[s] - self.lo[s])
        np.clip(v, self.lo, self.hi, out=v)
        v = np.rint(v * self.scale) / self.scale + 0.0  # + 0.0 turns -0.0 into 0.0
        for an, i0, i1 in spans:
            if i1 == i0:
                continue
            if an.kind == "stuck":
                if an.value is None:
                    an.value = float(v[i0, an.sensor])
                v[i0:i1, an.sensor] = an.value
            elif an.kind == "dropout":
                if keep is None:
                    keep = np.ones((k, n_sensors), dtype=bool)
                keep[i0:i1, an.sensor] = False
        self.active = [an for an in self.active if an.t1 > b]

        # jitter < period - 1 ms, so per-sensor integer ts stay strictly increasing
        offset = t[:, None] + jitter * rng.random((k, n_sensors)) if jitter else np.repeat(
            t[:, None], n_sensors, axis=1)
        ts = np.floor(offset).astype(np.int64) + self.start_ms
        cols: tuple[np.ndarray, ...] = (
            np.repeat(n, n_sensors), np.tile(np.arange(n_sensors, dtype=np.int32), k),
            ts.ravel(), v.ravel())
        if keep is not None:
            flat = keep.ravel()
            cols = tuple(c[flat] for c in cols)
        self.pending.append(cols)

    def emit(self, n_until: int, until_ms: int) -> tuple[ReadingBlock | None, list[ContextEvent]]:
        pieces, rest = [], []
        for cols in self.pending:
            cut = int(np.searchsorted(cols[0], n_until))
            if cut:
                pieces.append(tuple(c[:cut] for c in cols[1:]))
            if cut < len(cols[0]):
                rest.append(tuple(c[cut:] for c in cols))
        self.pending = rest
        events = []
        while self.events and self.events[0].ts < until_ms:
            events.append(self.events.popleft())
        if not pieces:
            return None, events
        sensor, ts, value = (np.concatenate(p) if len(pieces) > 1 else p[0]
                             for p in zip(*pieces, strict=True))
        order = np.argsort(ts, kind="stable")  # nearly sorted already: cheap for timsort
        return ReadingBlock(self.name, self.names, sensor[order], ts[order], value[order]), events


class FabModel:
    """A fab of machines; `advance` moves simulated time and returns what happened."""

    def __init__(self, config: SimConfig, start_ms: int | None = None, *,
                 record_anomalies: bool = False):
        start = config.start_ms if start_ms is None else start_ms
        if start is None:
            raise ValueError("start_ms is required (in the call or in SimConfig)")
        self.config = config
        self.start_ms = int(start)
        self.period_ms = 1000.0 / config.rate_hz
        self.frame_ms = frame_ms(config.rate_hz)
        self.jitter_ms = max(0.0, min(config.jitter * self.period_ms, self.period_ms - 1.001))
        self._rate = Fraction(config.rate_hz)
        seeds = np.random.SeedSequence(config.seed).spawn(config.machines)
        self._machines = [_Machine(index=i, config=config, start_ms=self.start_ms, seeds=s)
                          for i, s in enumerate(seeds)]
        self._by_name = {m.name: m for m in self._machines}
        self.machines: list[str] = [m.name for m in self._machines]
        self.anomalies: list[Anomaly] | None = [] if record_anomalies else None
        self._frames = 0
        self._until = self.start_ms

    def sensors(self, machine: str) -> list[str]:
        return self._by_name[machine].names.tolist()

    def sensor_kind(self, machine: str, sensor: str) -> SensorKind:
        """Unit, resolution and physical range of a sensor."""
        return self._by_name[machine].kinds[sensor]

    def _count(self, rel_ms: int) -> int:
        """Number of nominal sampling instants in [0, rel_ms), exactly."""
        return max(0, math.ceil(Fraction(rel_ms) * self._rate / 1000))

    def advance(self, until_ms: int) -> tuple[list[ReadingBlock], list[ContextEvent]]:
        """Readings with nominal time in [previous until_ms, until_ms) and context events
        with ts in the same range; blocks per machine, events sorted by ts."""
        until_ms = int(until_ms)
        if until_ms <= self._until:
            return [], []
        rel = until_ms - self.start_ms
        while self._frames * self.frame_ms < rel:
            a = self._frames * self.frame_ms
            n = np.arange(self._count(a), self._count(a + self.frame_ms), dtype=np.int64)
            t = n * self.period_ms
            for m in self._machines:
                m.compute_frame(a, n, t, self.period_ms, self.jitter_ms, self.anomalies)
            self._frames += 1
        n_until = self._count(rel)
        blocks, events = [], []
        for m in self._machines:
            block, evs = m.emit(n_until, until_ms)
            if block is not None:
                blocks.append(block)
            events.extend(evs)
        events.sort(key=lambda e: e.ts)  # stable: ties keep machine order
        self._until = until_ms
        return blocks, events
