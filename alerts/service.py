"""Alerting inside the pipeline: wires the rule engine, lot context, recipe book and outbox.

The pipeline calls, in this order and under its ingest lock: `on_context` for a lot event
(which resolves the recipe version in effect at the run's start), `evaluate` for a batch
of kept readings, then, after appending the events to the write-ahead log, `appended`.
The committer thread calls `take_appended` before an fsync and `committed` after it, so an
event reaches a sink only once the log holds it. `recover` rebuilds open excursions, lot
context, sequence numbers and each sink's backlog from the lake and the log at start.
The recipe file is reloaded while running when it has changed and then stayed unchanged for
one check; a reload that is unreadable or rewrites a version already in effect is refused
(the old book stays) and reported.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from contextlib import AbstractContextManager
from pathlib import Path

import pyarrow as pa

from alerts.engine import AlertEngine
from alerts.lotcontext import LotContext
from alerts.outbox import Outbox, latency_summary
from alerts.recipes import EMPTY_BOOK, RecipeBook, RecipeError, changed_history, read_book
from alerts.sinks import LogSink, build_sinks
from core.clock import Clock
from core.errors import ConfigError
from core.records import AlertEvent
from core.settings import Settings
from ingest.codec import ContextEvent
from tiers.unsealed import ALERTS_SCHEMA, CONTEXT_SCHEMA

log = logging.getLogger("fabtier.alerts")


def load_book(settings: Settings) -> RecipeBook:
    """The configured recipe book (empty when none); a bad file is a ConfigError."""
    if not settings.alerts.recipes:
        return EMPTY_BOOK
    try:
        return read_book(Path(settings.alerts.recipes))
    except RecipeError as exc:
        raise ConfigError("[alerts] recipes", f"{exc.where}: {exc.problem}", exc.fix) from None


def _ms_columns(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    for name in names:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, table.column(name).cast(pa.int64()))
    return table


def events_from_table(table: pa.Table) -> list[AlertEvent]:
    """Stored events (no note: NULL, or '' in files written before) as made: note ''."""
    table = _ms_columns(table.select(ALERTS_SCHEMA.names), ("ts", "raised_at"))
    return [AlertEvent(**{**row, "note": row["note"] or ""}) for row in table.to_pylist()]


def context_from_table(table: pa.Table) -> list[ContextEvent]:
    table = _ms_columns(table.select(CONTEXT_SCHEMA.names), ("ts",))
    return [ContextEvent(**row) for row in table.to_pylist()]


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class Alerting:
    def __init__(self, settings: Settings, keys, *, clock: Clock, lock: AbstractContextManager,
                 sinks: list | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._lock = lock  # the pipeline's ingest lock: the engine is used under it
        alerts = settings.alerts
        self._recipes_path = Path(alerts.recipes) if alerts.recipes else None
        self._recipes_signature = _file_signature(self._recipes_path) if self._recipes_path else None
        self._changing_signature: tuple[int, int] | None = None
        self.book = load_book(settings)
        self.lots = LotContext()
        self.engine = AlertEngine(settings.alert_rules, keys=keys, lots=self.lots, book=self.book,
                                  writer=settings.cold.writer_id,
                                  flap_window_ms=round(alerts.flap_window * 1000), flap_max=alerts.flap_max)
        self._appended: deque[AlertEvent] = deque()
        self._commit_latency: deque[float] = deque(maxlen=1000)  # decision -> durable, ms
        self._sinks = sinks  # None: the configured ones, built at start
        self.outbox: Outbox | None = None
        self._backlog: list[AlertEvent] = []  # this writer's durable events, for the outbox
        self.raised = 0
        self.cleared = 0
        self.recipe_reloads = 0
        self.recipe_reload_errors = 0
        self.last_reload_error = ""
        self._stop = threading.Event()
        self._reloader: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.engine.rules)

    # ---- ingest path (under the pipeline's lock) ----------------------------------------
    def on_context(self, event: ContextEvent) -> ContextEvent:
        """Record a lot event; a start gets the recipe version in effect at its ts."""
        if event.event == "start" and event.recipe_version is None:
            version = self.book.version_at(event.recipe, event.ts)
            if version is not None:
                event = dataclasses.replace(event, recipe_version=version.version)
        self.lots.add(event)
        return event

    def evaluate(self, machine: str | None, key_ids, ts, value) -> list[AlertEvent]:
        """Judge kept readings (`machine` None: of several machines); lock held."""
        events = self.engine.evaluate(machine, key_ids, ts, value, self.clock.now_ms())
        for e in events:
            if e.state == "raised":
                self.raised += 1
            else:
                self.cleared += 1
        return events

    def appended(self, events: list[AlertEvent]) -> None:
        """The events are in the log (not yet fsynced)."""
        self._appended.extend(events)

    # ---- commit path (the committer thread) --------------------------------------------
    def take_appended(self) -> list[AlertEvent]:
        """Events appended so far; call before the fsync that will cover them."""
        count = len(self._appended)
        return [self._appended.popleft() for _ in range(count)]

    def committed(self, events: list[AlertEvent]) -> None:
        if events:
            now_ms = time.time_ns() / 1e6
            self._commit_latency.extend(now_ms - e.raised_at for e in events)
            if self.outbox is not None:
                self.outbox.push(events)

    # ---- start, stop, recovery --------------------------------------------------------
    def recover(self, alerts: pa.Table, context: pa.Table) -> None:
        """Rebuild state from durable events: this writer's alert log and recent lot events."""
        for event in sorted(context_from_table(context), key=lambda e: e.ts):
            self.lots.add(event)
        events = sorted((e for e in events_from_table(alerts) if e.writer == self.engine.writer),
                        key=lambda e: e.seq)
        open_now = self.engine.restore(events)
        self._backlog = events
        if open_now:
            log.info("%d alert excursion(s) open from before the restart", open_now)

    def start(self) -> None:
        """Start delivering: each sink gets the durable events after its cursor, then live ones."""
        sinks = [LogSink(), *(build_sinks(self.settings) if self._sinks is None else self._sinks)]
        self.outbox = Outbox(self.settings.data_dir / "alerts" / "outbox", sinks,
                             retry_max=self.settings.alerts.retry_max)
        self.outbox.restore(self._backlog, last_seq=self.engine.next_seq - 1)
        self._backlog = []
        self.outbox.start()
        if self._recipes_path is not None:
            self._reloader = threading.Thread(target=self._reload_loop, name="recipes-reload", daemon=True)
            self._reloader.start()

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        if self._reloader is not None:
            self._reloader.join()
        if self.outbox is not None:
            self.outbox.stop(grace)

    # ---- recipes ----------------------------------------------------------------------
    def _reload_loop(self) -> None:
        while not self._stop.wait(self.settings.alerts.recipes_reload):
            try:
                self.reload_recipes()
            except Exception:  # a bug here must not end reloading for good
                log.exception("reloading recipes failed")

    def reload_recipes(self) -> bool:
        """Load the recipe file again if it changed and then stayed the same for one check
        (a file written in place is read only once its writer is done); True when a new
        book is in use."""
        path = self._recipes_path
        signature = _file_signature(path) if path else None
        if path is None or signature is None or signature == self._recipes_signature:
            self._changing_signature = None
            return False
        if signature != self._changing_signature:
            self._changing_signature = signature
            return False
        self._recipes_signature = signature
        try:
            book = read_book(path)
        except RecipeError as exc:
            return self._refuse(str(exc))
        problems = changed_history(self.book, book, self.clock.now_ms())
        if problems:
            return self._refuse(f"{self._recipes_path}: {'; '.join(problems)}; "
                                "add a new version with a later effective time instead")
        with self._lock:
            self.book = book
            self.engine.set_book(book)
        self.recipe_reloads += 1
        self.last_reload_error = ""
        log.info("recipes reloaded from %s: %d version(s)", self._recipes_path, len(book))
        return True

    def _refuse(self, reason: str) -> bool:
        self.recipe_reload_errors += 1
        self.last_reload_error = reason
        log.error("recipe file not reloaded, the previous recipes stay in use: %s", reason)
        return False

    # ---- reads --------------------------------------------------------------------------
    def metrics(self) -> dict:
        return {
            "rules": len(self.engine.rules), "raised": self.raised, "cleared": self.cleared,
            "open": self.engine.open_count, "late_readings": self.engine.late_readings,
            "recipe_versions": len(self.book), "recipe_reloads": self.recipe_reloads,
            "recipe_reload_errors": self.recipe_reload_errors, "last_reload_error": self.last_reload_error,
            "decided_to_durable_ms": latency_summary(list(self._commit_latency)),
            "sinks": self.outbox.metrics() if self.outbox else {},
        }
