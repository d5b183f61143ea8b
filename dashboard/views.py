"""Pure helpers of the dashboard: the SQL statements it sends, the merging of per-bucket
bands, and the recipe limits that applied to each bucket. No I/O here, so the tests can
check every edge without an instance.

Time is epoch milliseconds (UTC) throughout; SQL gets timestamps as `TIMESTAMP '...'`
literals (UTC wall time) because a literal, unlike `now()`, reaches the lake's scan
(README, *SQL*: narrow questions read narrow).
"""

from __future__ import annotations

import datetime as dt
import re
from bisect import bisect_right
from dataclasses import dataclass, field

_CHAMBER = re.compile(r"^ch\d+/")


def sql_text(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_time(ms: int) -> str:
    """A TIMESTAMP literal (UTC wall time, millisecond precision)."""
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return f"TIMESTAMP '{moment.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}'"


def bucket_ms_for(minutes: float, buckets: int = 300) -> int:
    """A round bucket width that gives about `buckets` buckets over `minutes`."""
    raw = minutes * 60_000 / buckets
    for step in (250, 500, 1000, 2000, 5000, 10_000, 15_000, 30_000, 60_000):
        if raw <= step:
            return step
    return 60_000 * max(1, round(raw / 60_000))


def bands_sql(machine: str, since_ms: int, bucket_ms: int, sensors: list[str] | None = None) -> str:
    """Min, max, mean and count per sensor and bucket of one machine's readings since `since_ms`."""
    where = [f"machine = {sql_text(machine)}", f"ts >= {sql_time(since_ms)}"]
    if sensors:
        where.append("sensor IN (" + ", ".join(sql_text(s) for s in sensors) + ")")
    return (f"SELECT sensor, (epoch_ms(ts) // {bucket_ms}) * {bucket_ms} AS t, min(value) AS mn, "
            f"max(value) AS mx, avg(value) AS av, count(*) AS n FROM readings WHERE {' AND '.join(where)} "
            "GROUP BY sensor, t ORDER BY sensor, t")


def last_reading_sql(since_ms: int) -> str:
    """Each machine's newest reading since `since_ms` (a short window: it is read every poll)."""
    return (f"SELECT machine, epoch_ms(max(ts)) AS last_ms FROM readings WHERE ts >= {sql_time(since_ms)} "
            "GROUP BY machine")


CURRENT_RUNS_SQL = (
    "SELECT machine, lot, wafer, recipe, recipe_version, epoch_ms(start_ts) AS start_ms, "
    "epoch_ms(end_ts) AS end_ms FROM lot_runs "
    "QUALIFY row_number() OVER (PARTITION BY machine ORDER BY start_ts DESC) = 1")

RECIPE_LIMITS_SQL = (
    "SELECT recipe, version, step_no, step, step_start_s, step_end_s, settle_s, kind, low, high "
    "FROM recipe_limits ORDER BY recipe, version, step_no")


def runs_sql(machine: str, since_ms: int) -> str:
    """The lot runs of one machine that overlap [since_ms, now]."""
    return ("SELECT lot, wafer, recipe, recipe_version, epoch_ms(start_ts) AS start_ms, epoch_ms(end_ts) AS end_ms "
            f"FROM lot_runs WHERE machine = {sql_text(machine)} AND (end_ts IS NULL OR end_ts >= "
            f"{sql_time(since_ms)}) ORDER BY start_ts")


def alerts_sql(*, state: str = "recent", machine: str = "", rule: str = "", lot: str = "", limit: int = 200) -> str:
    """The `alerts` view as GET /alerts answers it, for an instance without that route:
    `recent` is the newest events, `open` the excursions whose last event is a raise."""
    where = []
    for column, value in (("machine", machine), ("rule", rule), ("lot", lot)):
        if value:
            where.append(f"{column} = {sql_text(value)}")
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    limit = max(1, min(int(limit), 5000))
    if state == "open":
        return (f"SELECT * FROM (SELECT * FROM alerts{cond} QUALIFY row_number() OVER (PARTITION BY machine, "
                "sensor, rule ORDER BY raised_at DESC, seq DESC) = 1) WHERE state = 'raised' "
                f"ORDER BY raised_at DESC LIMIT {limit}")
    return f"SELECT * FROM alerts{cond} ORDER BY raised_at DESC, seq DESC LIMIT {limit}"


def sensor_kind(sensor: str) -> str:
    """A sensor's kind as recipes name it: without a leading chamber level."""
    return _CHAMBER.sub("", sensor, count=1)


@dataclass
class Step:
    name: str
    start_s: float
    end_s: float
    settle_s: float
    limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


def recipe_steps(rows: list[dict]) -> dict[tuple[str, str], list[Step]]:
    """`recipe_limits` rows -> the steps of each (recipe, version), in order."""
    book: dict[tuple[str, str], dict[int, Step]] = {}
    for row in rows:
        steps = book.setdefault((str(row["recipe"]), str(row["version"])), {})
        step = steps.get(row["step_no"])
        if step is None:
            step = steps[row["step_no"]] = Step(str(row["step"]), float(row["step_start_s"]),
                                                float(row["step_end_s"]), float(row["settle_s"] or 0.0))
        if row.get("kind") is not None:
            step.limits[str(row["kind"])] = (row.get("low"), row.get("high"))
    return {key: [steps[n] for n in sorted(steps)] for key, steps in book.items()}


def step_at(run: dict, steps: dict[tuple[str, str], list[Step]], ts_ms: int) -> Step | None:
    """The recipe step `run` is in at `ts_ms` (None outside the run, without recipe data, or
    past the recipe's last step)."""
    if run.get("recipe_version") is None or ts_ms < run["start_ms"]:
        return None
    if run.get("end_ms") is not None and ts_ms >= run["end_ms"]:
        return None
    offset = (ts_ms - run["start_ms"]) / 1000
    for step in steps.get((str(run["recipe"]), str(run["recipe_version"])), []):
        if step.start_s <= offset < step.end_s:
            return step
    return None


def limits_for(sensor: str, times: list[int], runs: list[dict], steps: dict[tuple[str, str], list[Step]],
               bucket_ms: int = 0) -> tuple[list[float | None], list[float | None]]:
    """The (low, high) recipe limits that applied to `sensor` at each bucket start of `times`:
    those of the step the machine's run was in, from the step's settle on (as the rules judge),
    None where no limit applied. `runs` are sorted by start."""
    kind = sensor_kind(sensor)
    starts = [r["start_ms"] for r in runs]
    low: list[float | None] = []
    high: list[float | None] = []
    for t in times:
        mid = t + bucket_ms // 2  # a bucket is drawn at its start and judged by its middle
        i = bisect_right(starts, mid) - 1
        lim: tuple[float | None, float | None] = (None, None)
        if i >= 0:
            step = step_at(runs[i], steps, mid)
            if step is not None and (mid - runs[i]["start_ms"]) / 1000 >= step.start_s + step.settle_s:
                lim = step.limits.get(kind, (None, None))
        low.append(lim[0])
        high.append(lim[1])
    return low, high


@dataclass
class Bands:
    """One machine's per-sensor buckets over a sliding window, merged poll by poll."""

    window_ms: int
    bucket_ms: int
    rows: dict[str, dict[int, tuple[float, float, float, int]]] = field(default_factory=dict)

    def merge(self, result: list[dict], now_ms: int) -> dict[str, list[int]]:
        """Take a `bands_sql` answer (it replaces the buckets it has) and drop what left the
        window; returns the bucket times each sensor got (new or changed)."""
        changed: dict[str, list[int]] = {}
        for row in result:
            sensor, t = str(row["sensor"]), int(row["t"])
            value = (row["mn"], row["mx"], row["av"], int(row["n"]))
            buckets = self.rows.setdefault(sensor, {})
            if buckets.get(t) != value:
                buckets[t] = value
                changed.setdefault(sensor, []).append(t)
        oldest = self.oldest(now_ms)
        for buckets in self.rows.values():
            for t in [t for t in buckets if t < oldest]:
                del buckets[t]
        return changed

    def oldest(self, now_ms: int) -> int:
        return (now_ms - self.window_ms) // self.bucket_ms * self.bucket_ms

    def resume_from(self, now_ms: int) -> int:
        """Where the next poll starts: the newest bucket held (it may still fill), minus one
        (readings arrive a little late), and never before the window."""
        newest = max((max(b) for b in self.rows.values() if b), default=None)
        if newest is None:
            return self.oldest(now_ms)
        return max(self.oldest(now_ms), newest - self.bucket_ms)

    def series(self, sensor: str, since: int | None = None) -> dict[str, list]:
        """Columns of one sensor's buckets (from `since` on): t, mn, mx, av, n."""
        buckets = self.rows.get(sensor, {})
        times = sorted(t for t in buckets if since is None or t >= since)
        return {"t": times, "mn": [buckets[t][0] for t in times], "mx": [buckets[t][1] for t in times],
                "av": [buckets[t][2] for t in times], "n": [buckets[t][3] for t in times]}


def normalise_alert(row: dict) -> dict:
    """An alert (from MQTT, GET /alerts or SQL) with numeric `ts`/`raised_at` (epoch ms), a
    `key` for its excursion (machine, sensor, rule), and `ack` as {who, note, at} (the first
    acknowledgement; `acks` keeps them all, oldest first) or None."""
    out = dict(row)
    for name in ("ts", "raised_at"):
        out[name] = epoch_ms(out.get(name))
    ack = out.get("ack")
    acks = out.get("acks")
    if isinstance(acks, list) and acks:  # GET /alerts: every acknowledgement, oldest first
        out["acks"] = [{"who": a.get("who"), "note": a.get("note") or None, "at": epoch_ms(a.get("at"))}
                       for a in acks if isinstance(a, dict)]
        ack = out["acks"][0] if out["acks"] else None
    elif not isinstance(ack, dict):
        who = next((out.get(k) for k in ("acked_by", "ack_by", "ack_who", "acknowledged_by") if out.get(k)), None)
        ack = None
        if who:
            ack = {"who": who,
                   "note": next((out.get(k) for k in ("ack_note", "acked_note") if out.get(k)), None),
                   "at": epoch_ms(next((out.get(k) for k in ("acked_at", "ack_at", "acknowledged_at")
                                        if out.get(k)), None))}
    elif "at" in ack:
        ack = {**ack, "at": epoch_ms(ack.get("at"))}
    out["ack"] = ack
    out["key"] = f"{out.get('machine')}|{out.get('sensor')}|{out.get('rule')}"
    return out


def epoch_ms(value: object) -> int | None:
    """Epoch ms of an int, float or ISO-8601 string (no offset: UTC, as the SQL answers)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)
