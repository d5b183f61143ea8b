"""What the dashboard shows, kept live: each feed (the fab overview, one machine, the alert
list, the instance's status) polls the instance only while at least one browser watches it,
once for all of them, and the hub fans its events out to every watcher's event stream.

Cost to the instance, by design: a watched machine is one read of the hot ring a second (GET
/bands: the buckets since the last poll; SQL when the ring lacks part of the span), plus, every
few seconds, one SQL statement for its lot runs; the overview reads each machine's newest
reading over a short window and one `/series` per machine; the alert list is refreshed every
few seconds, and new alerts come from the broker (`dashboard.alertfeed`), not from polling.
Nobody watching: nothing is asked at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import orjson

from dashboard import views
from dashboard.instance import Instance, InstanceError

log = logging.getLogger("fabtier.dashboard")

KEEPALIVE_S = 15.0
MACHINE_MINUTES = 5.0
# Sensors the overview prefers for a machine's sparkline, else the machine's first sensor.
KEY_SENSORS = ("ch1/temp", "ch1/pressure", "rf/forward_power")


def now_ms() -> int:
    return int(time.time() * 1000)


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; `data` as JSON on one line."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Hub:
    """Fan-out of server-sent events: one bounded queue per watching connection. A browser
    too slow to take its events loses the oldest ones (and the next snapshot repairs it),
    so one slow screen never holds back the others or grows memory."""

    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)

    def subscribe(self, channel: str, maxsize: int = 256) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=maxsize)
        self._subs[channel].add(queue)
        return queue

    def unsubscribe(self, channel: str, queue: asyncio.Queue[bytes]) -> None:
        self._subs[channel].discard(queue)

    def watchers(self, channel: str | None = None) -> int:
        if channel is None:
            return sum(len(s) for s in self._subs.values())
        return len(self._subs.get(channel, ()))

    def channels(self) -> list[str]:
        return [c for c, s in self._subs.items() if s]

    def publish(self, channel: str, event: str, data: Any) -> None:
        queues = self._subs.get(channel)
        if not queues:
            return
        message = sse(event, data)
        for queue in queues:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)


class Feed:
    """A poller of one channel. `poll` asks the instance and publishes; `snapshot` is what a
    new watcher gets first."""

    interval = 2.0

    def __init__(self, live: Live, channel: str) -> None:
        self.live = live
        self.channel = channel
        self.ready = asyncio.Event()
        self.error: str | None = None
        self.task: asyncio.Task | None = None

    def keep_running(self) -> bool:
        return self.live.hub.watchers(self.channel) > 0

    async def poll(self) -> None:
        raise NotImplementedError

    def snapshot(self) -> list[bytes]:
        return []

    def problem(self) -> list[bytes]:
        return [sse("problem", {"error": self.error})] if self.error else []


class Live:
    def __init__(self, instance: Instance, *, hot_window_s: float = 3600.0) -> None:
        self.instance = instance
        self.hub = Hub()
        self.hot_window_s = hot_window_s
        self.feeds: dict[str, Feed] = {}
        self.alerts = AlertsFeed(self, "alerts")
        self.feeds["alerts"] = self.alerts
        self.broker_connected = False
        self._steps: dict[tuple[str, str], list[views.Step]] = {}
        self._steps_at = 0.0

    # ---- feeds ----------------------------------------------------------------------------
    def feed(self, channel: str) -> Feed:
        feed = self.feeds.get(channel)
        if feed is None:
            if channel == "overview":
                feed = OverviewFeed(self, channel)
            elif channel == "status":
                feed = StatusFeed(self, channel)
            elif channel.startswith("machine:"):
                feed = MachineFeed(self, channel, channel.removeprefix("machine:"))
            else:
                raise KeyError(channel)
            self.feeds[channel] = feed
        return feed

    def _ensure_running(self, feed: Feed) -> None:
        # The runner returns in the same step of the loop that finds no watcher, so a task not
        # done here will see this watcher; a done one is started again.
        if feed.task is None or feed.task.done():
            feed.task = asyncio.get_running_loop().create_task(self._run(feed), name=f"feed {feed.channel}")

    async def _run(self, feed: Feed) -> None:
        while feed.keep_running():
            try:
                await feed.poll()
                if feed.error is not None:
                    feed.error = None
                    self.hub.publish(feed.channel, "problem", {"error": None})
            except InstanceError as exc:
                if str(exc) != feed.error:
                    log.warning("%s: %s", feed.channel, exc)
                feed.error = str(exc)
                self.hub.publish(feed.channel, "problem", {"error": feed.error})
            except Exception as exc:  # a feed keeps going; the log has the details
                log.exception("feed %s failed", feed.channel)
                feed.error = f"internal error: {type(exc).__name__}: {exc}"
                self.hub.publish(feed.channel, "problem", {"error": feed.error})
            feed.ready.set()
            await asyncio.sleep(feed.interval)

    async def watch(self, channel: str) -> AsyncIterator[bytes]:
        """The event stream of one channel for one browser: `retry`, the snapshot, then every
        event as it comes, with a comment every KEEPALIVE_S so proxies keep it open."""
        feed = self.feed(channel)
        queue = self.hub.subscribe(channel)
        try:
            self._ensure_running(feed)
            if feed is not self.alerts:
                self._ensure_running(self.alerts)  # open alerts feed the overview and machine pages
            yield b"retry: 1000\n\n"
            deadline = asyncio.get_running_loop().time() + 10
            for ready in (feed.ready, self.alerts.ready):  # the snapshot carries the open alerts too
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
            while not queue.empty():  # published before the snapshot, which holds it: never after it
                queue.get_nowait()
            for message in feed.snapshot() + feed.problem():
                yield message
            yield sse("broker", {"connected": self.broker_connected})
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
        finally:
            self.hub.unsubscribe(channel, queue)

    # ---- shared state ---------------------------------------------------------------------
    async def recipe_steps(self) -> dict[tuple[str, str], list[views.Step]]:
        if time.monotonic() - self._steps_at > 30:
            self._steps = views.recipe_steps(await self.instance.sql(views.RECIPE_LIMITS_SQL))
            self._steps_at = time.monotonic()
        return self._steps

    def on_alert(self, event: dict) -> None:
        """An alert from the broker (on the event loop's thread)."""
        alert = views.normalise_alert(event)
        alert["received_ms"] = now_ms()
        self.alerts.take(alert)
        self.hub.publish("alerts", "alert", alert)
        machine = alert.get("machine")
        if machine:
            self.hub.publish(f"machine:{machine}", "alert", alert)
        self.hub.publish("overview", "alert", alert)

    def on_broker(self, connected: bool) -> None:
        self.broker_connected = connected
        for channel in self.hub.channels():
            self.hub.publish(channel, "broker", {"connected": connected})

    async def ack(self, alert_id: str, who: str, note: str) -> dict:
        ack = await self.instance.ack(alert_id, who=who, note=note)
        self.alerts.acked(alert_id, ack)
        self.hub.publish("alerts", "ack", {"id": alert_id, "ack": ack})
        return ack


class AlertsFeed(Feed):
    """The recent and open alerts: the instance's list every few seconds (which also catches
    what the broker feed missed while the dashboard was down), and the broker's events as
    they come. Runs while anything at all is watched: the overview and machine pages need
    the open alerts too."""

    interval = 5.0

    def __init__(self, live: Live, channel: str) -> None:
        super().__init__(live, channel)
        self.recent: list[dict] = []
        self.open: dict[str, dict] = {}
        self._signature: object = None

    def keep_running(self) -> bool:
        return self.live.hub.watchers() > 0

    async def poll(self) -> None:
        recent = await self.live.instance.alerts(state="recent", limit=200)
        open_ = await self.live.instance.alerts(state="open", limit=1000)
        # Events that arrived by MQTT after the instance answered stay (the answer may be older).
        known = {a.get("id") for a in recent}
        newest = max((a.get("raised_at") or 0 for a in recent), default=0)
        extra = [a for a in self.recent if a.get("id") not in known and (a.get("raised_at") or 0) > newest]
        self.recent = sorted(extra + recent, key=lambda a: (a.get("raised_at") or 0, a.get("seq") or 0),
                             reverse=True)[:500]
        self.open = {a["key"]: a for a in open_}
        for alert in extra:
            self._track(alert)
        signature = [(a.get("id"), a.get("state"), bool(a.get("ack"))) for a in self.recent]
        if signature != self._signature:
            self._signature = signature
            self.live.hub.publish(self.channel, "alerts", self.recent)

    def snapshot(self) -> list[bytes]:
        return [sse("alerts", self.recent)]

    def _track(self, alert: dict) -> None:
        if alert.get("state") == "raised":
            self.open[alert["key"]] = alert
        elif alert.get("state") == "cleared":
            self.open.pop(alert["key"], None)

    def take(self, alert: dict) -> None:
        if alert.get("id") is not None and any(a.get("id") == alert["id"] for a in self.recent):
            return  # a repeat (at least once delivery)
        self.recent.insert(0, alert)
        del self.recent[500:]
        self._track(alert)

    def acked(self, alert_id: str, ack: dict) -> None:
        for alert in [*self.recent, *self.open.values()]:
            if alert.get("id") == alert_id:
                alert["acks"] = [*(alert.get("acks") or []), ack]
                alert["ack"] = alert["acks"][0]

    def open_for(self, machine: str) -> list[dict]:
        return [a for a in self.open.values() if a.get("machine") == machine]


class OverviewFeed(Feed):
    """Every machine: lot, wafer, recipe, step, open alerts, age of its newest reading and a
    sparkline of a key sensor."""

    interval = 2.0
    RECENT_S = 15  # the window of the newest-reading query run every poll
    SPARK_MINUTES = 10.0

    def __init__(self, live: Live, channel: str) -> None:
        super().__init__(live, channel)
        self.machines: dict[str, list[str]] = {}
        self.last_ms: dict[str, int] = {}
        self._sensors_at = 0.0
        self._long_at = 0.0
        self._message: bytes | None = None

    async def poll(self) -> None:
        instance, now = self.live.instance, now_ms()
        if time.monotonic() - self._sensors_at > 30:
            machines: dict[str, list[str]] = {}
            for row in await instance.sensors():
                machines.setdefault(row["machine"], []).append(row["sensor"])
            self.machines = machines
            self._sensors_at = time.monotonic()
        for row in await instance.sql(views.last_reading_sql(now - self.RECENT_S * 1000)):
            self.last_ms[row["machine"]] = row["last_ms"]
        silent = [m for m in self.machines if now - self.last_ms.get(m, 0) > self.RECENT_S * 1000]
        if silent and time.monotonic() - self._long_at > 30:  # a silent machine: look further back, seldom
            self._long_at = time.monotonic()
            since = now - int(self.live.hot_window_s * 1000)
            for row in await instance.sql(views.last_reading_sql(since)):
                self.last_ms[row["machine"]] = max(self.last_ms.get(row["machine"], 0), row["last_ms"])
        runs = {r["machine"]: r for r in await instance.sql(views.CURRENT_RUNS_SQL)}
        steps = await self.live.recipe_steps()
        sparks = await asyncio.gather(*(self._spark(m, sensors) for m, sensors in self.machines.items()))
        rows = []
        for (machine, sensors), spark in zip(self.machines.items(), sparks, strict=True):
            run = runs.get(machine)
            running = run is not None and run.get("end_ms") is None
            step = views.step_at(run, steps, now) if run is not None and running else None
            open_alerts = self.live.alerts.open_for(machine)
            rows.append({
                "machine": machine, "sensors": len(sensors),
                "lot": run["lot"] if running and run else None, "wafer": run["wafer"] if running and run else None,
                "recipe": run["recipe"] if running and run else None,
                "recipe_version": run.get("recipe_version") if running and run else None,
                "step": step.name if step else None, "last_ms": self.last_ms.get(machine),
                "alerts": len(open_alerts), "unacked": sum(1 for a in open_alerts if not a.get("ack")),
                "spark": spark,
            })
        rows.sort(key=lambda r: str(r["machine"]))
        data = {"now": now, "machines": rows, "broker": self.live.broker_connected}
        self._message = sse("overview", data)
        self.live.hub.publish(self.channel, "overview", data)

    async def _spark(self, machine: str, sensors: list[str]) -> dict:
        sensor = next((s for s in KEY_SENSORS if s in sensors), sorted(sensors)[0] if sensors else "")
        answer = await self.live.instance.series(machine, sensor, minutes=self.SPARK_MINUTES, points=60) \
            if sensor else None
        if not answer:
            return {"sensor": sensor, "ts": [], "v": []}
        return {"sensor": sensor, "ts": answer["ts"], "v": answer["v"]}

    def snapshot(self) -> list[bytes]:
        return [self._message] if self._message else []


class MachineFeed(Feed):
    """One machine's sensors over the last MACHINE_MINUTES as min-max bands and means per
    bucket, with the recipe limits that applied and the machine's alerts."""

    interval = 1.0
    RUNS_EVERY_S = 5.0

    def __init__(self, live: Live, channel: str, machine: str) -> None:
        super().__init__(live, channel)
        self.machine = machine
        window = int(MACHINE_MINUTES * 60_000)
        self.bands = views.Bands(window_ms=window, bucket_ms=views.bucket_ms_for(MACHINE_MINUTES))
        self.runs: list[dict] = []
        self._runs_at = 0.0
        self._steps: dict[tuple[str, str], list[views.Step]] = {}

    async def poll(self) -> None:
        instance, now = self.live.instance, now_ms()
        runs_changed = False
        if time.monotonic() - self._runs_at > self.RUNS_EVERY_S:
            self._runs_at = time.monotonic()
            runs = await instance.sql(views.runs_sql(self.machine, now - self.bands.window_ms))
            steps = await self.live.recipe_steps()
            runs_changed = runs != self.runs or steps is not self._steps
            self.runs, self._steps = runs, steps
        since = self.bands.resume_from(now)
        # The hot ring answers recent buckets at a fraction of a SQL statement's cost to the
        # instance; SQL (every tier) when the ring lacks part of the span (a new instance).
        rows = await instance.bands(self.machine, since_ms=since, bucket_ms=self.bands.bucket_ms)
        if rows is None:
            rows = await instance.sql(views.bands_sql(self.machine, since, self.bands.bucket_ms))
        changed = self.bands.merge(rows, now)
        if runs_changed:
            self.live.hub.publish(self.channel, "snapshot", self._snapshot_data(now))
        elif changed:
            self.live.hub.publish(self.channel, "update", {
                "now": now, "oldest": self.bands.oldest(now),
                "sensors": {s: self._columns(s, min(times)) for s, times in changed.items()}})

    def _columns(self, sensor: str, since: int | None = None) -> dict:
        columns = self.bands.series(sensor, since)
        columns["lo"], columns["hi"] = views.limits_for(sensor, columns["t"], self.runs, self._steps,
                                                        self.bands.bucket_ms)
        return columns

    def _snapshot_data(self, now: int) -> dict:
        run = self.runs[-1] if self.runs else None
        step = views.step_at(run, self._steps, now) if run else None
        oldest = self.bands.oldest(now)
        markers = [a for a in self.live.alerts.recent if a.get("machine") == self.machine
                   and (a.get("ts") or 0) >= oldest]
        return {"machine": self.machine, "now": now, "oldest": oldest, "bucket_ms": self.bands.bucket_ms,
                "window_ms": self.bands.window_ms, "run": run, "step": step.name if step else None,
                "sensors": {s: self._columns(s) for s in sorted(self.bands.rows)},
                "alerts": markers, "open": self.live.alerts.open_for(self.machine)}

    def snapshot(self) -> list[bytes]:
        return [sse("snapshot", self._snapshot_data(now_ms()))]


class StatusFeed(Feed):
    """/health and /metrics (ingest rate from the counters), and less often /tiers,
    /retrievals, the job runs and the last move of each job."""

    interval = 2.0
    SLOW_EVERY_S = 10.0

    def __init__(self, live: Live, channel: str) -> None:
        super().__init__(live, channel)
        self.data: dict = {}
        self._prev: tuple[float, int] | None = None
        self._slow_at = 0.0

    async def poll(self) -> None:
        instance = self.live.instance
        health = await instance.health()
        metrics = await instance.metrics()
        stored = int(metrics.get("readings_stored", 0))
        moment = time.monotonic()
        rate = None
        if self._prev is not None and moment > self._prev[0]:
            rate = max(0.0, (stored - self._prev[1]) / (moment - self._prev[0]))
        self._prev = (moment, stored)
        data = {**self.data, "now": now_ms(), "health": health, "metrics": metrics, "ingest_rate": rate}
        if moment - self._slow_at > self.SLOW_EVERY_S:
            self._slow_at = moment
            data["tiers"] = await instance.tiers()
            try:
                data["retrievals"] = await instance.retrievals()
            except InstanceError as exc:
                data["retrievals_error"] = str(exc)
            data["job_runs"] = await instance.sql(
                "SELECT job, trigger, outcome, epoch_ms(started_at) AS started_ms, epoch_ms(finished_at) AS "
                "finished_ms, detail FROM job_runs ORDER BY started_at DESC LIMIT 20")
            data["moves"] = await instance.sql(
                "SELECT job, epoch_ms(max(\"at\")) AS last_ms, count(*) AS moves, sum(\"rows\") AS \"rows\", "
                "sum(bytes) AS bytes FROM tier_moves GROUP BY job ORDER BY job")
        self.data = data
        self.live.hub.publish(self.channel, "status", data)

    def snapshot(self) -> list[bytes]:
        return [sse("status", self.data)] if self.data else []
