"""The alert rule engine: judges batches of readings against rules and recipe limits. Pure.

No I/O and no clock: the caller passes `now_ms` (the decision time that goes into
`raised_at`), and all durations (`for`, flap window) are measured in the readings' own
timestamps, so that the same readings always give the same alerts, live or replayed.

State per (rule, sensor), each transition one event:

    normal --out--> pending --still out after `for`--> raised --back past hysteresis--> normal
                       \\--back inside--> normal          (cleared event)
    a raise that is the (flap_max + 1)-th within flap_window --> damped (raised, flapping=true);
    damped --inside past the hysteresis for a whole flap_window--> normal (one cleared event)

"Out" is strictly beyond a limit (`value > high` or `value < low`). A raised `high` clears
at `value <= high - hysteresis`, a raised `low` at `value >= low + hysteresis`, judged by the
limit that applies to the clearing reading, which the `cleared` event reports as its
threshold (so a clear caused by the value coming back never carries a value beyond it). A
reading beyond the other limit clears and raises the other kind.

Recipe rules: the limits are those of the step the machine's lot run is in at the reading's
ts; for them the hysteresis is a fraction of the step's tolerance. A raised (or damped)
recipe excursion lives as long as the machine runs a lot:

    - a reading in a step's settle window (no limit yet; at a step change inside the run, or
      at the start of a run that directly follows) holds it: no event, it neither clears
      nor raises (and, damped, it counts neither as inside nor as out);
    - once the new step's limits apply it is judged by them: still beyond -> it stays raised
      without an event (the threshold of the `raised` event stays its threshold); back past
      the hysteresis -> `cleared`; beyond the other limit -> cleared and the other kind raised;
    - it ends without the value coming back only when no limit can apply: no lot run at the
      reading's ts ("the lot run ended"), a settled step that sets no limit for the sensor's
      kind ("step purge sets no limit for temp"), the run gone past the recipe's last step
      ("recipe ETCH-A v3 ended (no step after main-etch)"), or a run whose recipe version is
      not in the recipe data. Then one `cleared` with that note and the raise's threshold.

A pending excursion (`for` not reached yet) is broken by any reading that is not out, a
settle-window reading included, as before. Events carry the lot run at their reading's ts;
`step` only for recipe rules (the step whose limits judged the reading, else None).

Cost: every batch pays a handful of numpy operations (gather the sensors' tightest limits,
compare, test for open excursions); only sensors with an out reading or an open excursion
take the slower path, which walks state transitions with vectorised searches, so its Python
work grows with the number of transitions, not of readings. Why a recipe limit is missing
(settling, run ended, ...) is looked up there too, only for open recipe excursions that meet
a reading without a limit.

Readings of a sensor are judged in timestamp order within a batch. While an excursion is
pending or open, a reading older than the newest one already judged for it is late: it is
counted and does not move the state (the state already reflects later data).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from alerts.lotcontext import LotContext, Run
from alerts.recipes import EMPTY_BOOK, RecipeBook, kind_of
from core.protocols import Keys, Rule
from core.records import AlertEvent

NORMAL, PENDING, RAISED, DAMPED = 0, 1, 2, 3
_PHASE_NAMES = {NORMAL: "normal", PENDING: "pending", RAISED: "raised", DAMPED: "damped"}
_KIND = {1: "high", -1: "low"}
# Why a recipe rule has no limit for a reading (only asked where its limits are NaN).
_SETTLING, _NO_KIND, _RECIPE_DONE, _NO_RECIPE, _NO_RUN = 1, 2, 3, 4, 5


class _State:
    __slots__ = ("phase", "kind", "since", "threshold", "last_ts", "last_bad", "raises")

    def __init__(self) -> None:
        self.phase = NORMAL
        self.kind = 0
        self.since = 0  # pending: ts of the first out reading
        self.threshold = float("nan")
        self.last_ts: int | None = None  # newest reading judged while not normal
        self.last_bad = 0  # damped: ts of the newest reading not inside past the hysteresis
        self.raises: deque[int] = deque()  # ts of recent raises, for flap detection


@dataclass(frozen=True, slots=True)
class Excursion:
    """An excursion that is pending or open now (for metrics and tests)."""

    rule: str
    machine: str
    sensor: str
    state: str
    kind: str


class _RecipeRows:
    """Recipe limits of one batch's readings: NaN where no recipe limit applies. `run` and
    `step` are per reading, or one int for the whole batch (the common case)."""

    __slots__ = ("lo", "hi", "tol", "step", "run", "runs")

    def __init__(self, n: int) -> None:
        self.lo = np.full(n, np.nan)
        self.hi = np.full(n, np.nan)
        self.tol = np.full(n, np.nan)
        self.step: np.ndarray | int = np.full(n, -1, np.int64)
        self.run: np.ndarray | int = np.full(n, -1, np.int64)
        self.runs: list[Run] = []

    @classmethod
    def uniform(cls, run: Run, lo, hi, tol, step) -> _RecipeRows:
        rows = cls.__new__(cls)
        rows.lo, rows.hi, rows.tol, rows.step, rows.run, rows.runs = lo, hi, tol, step, 0, [run]
        return rows

    def at(self, row: int) -> tuple[int, int]:
        """(run index, step index) of one reading."""
        run = self.run if isinstance(self.run, int) else int(self.run[row])
        step = self.step if isinstance(self.step, int) else int(self.step[row])
        return run, step


class AlertEngine:
    def __init__(self, rules: Sequence[Rule], *, keys: Keys, lots: LotContext | None = None,
                 book: RecipeBook = EMPTY_BOOK, writer: str = "w0", flap_window_ms: int = 300_000,
                 flap_max: int = 3, next_seq: int = 1) -> None:
        self.rules = list(rules)
        self.keys = keys
        self.lots = lots or LotContext()
        self.book = book
        self.writer = writer
        self.flap_window_ms = int(flap_window_ms)
        self.flap_max = int(flap_max)
        self.next_seq = next_seq
        self.late_readings = 0
        self._any_recipe = any(r.recipe for r in self.rules)
        self._n = 0  # sensors whose matching rules are known
        self._min_high = np.empty(0)
        self._max_low = np.empty(0)
        self._has_recipe = np.empty(0, bool)
        self._kind = np.empty(0, np.int64)  # column of the sensor's kind in the book, -1 none
        self._active = np.empty(0, np.int32)  # pending/raised/damped states per sensor
        self._machine = np.empty(0, np.int32)  # machine number per sensor
        self._machine_numbers: dict[str, int] = {}
        self._machine_names: list[str] = []
        self._n_active = 0
        self._rules_of: list[tuple[int, ...]] = []
        self._states: dict[tuple[int, int], _State] = {}

    # ---- per-sensor tables ------------------------------------------------------------
    def _grow(self) -> None:
        n = len(self.keys)
        if n <= self._n:
            return
        if n > len(self._min_high):
            capacity = max(64, 2 * n)
            for name, fill in (("_min_high", np.inf), ("_max_low", -np.inf), ("_has_recipe", False),
                               ("_kind", -1), ("_active", 0), ("_machine", 0)):
                old = getattr(self, name)
                new = np.full(capacity, fill, dtype=old.dtype)
                new[:len(old)] = old
                setattr(self, name, new)
        for key in range(self._n, n):
            machine, sensor = self.keys.machines[key], self.keys.sensors[key]
            matched = tuple(i for i, r in enumerate(self.rules) if r.matches(machine, sensor))
            self._rules_of.append(matched)
            fixed = [self.rules[i] for i in matched if not self.rules[i].recipe]
            highs = [r.high for r in fixed if r.high is not None]
            lows = [r.low for r in fixed if r.low is not None]
            self._min_high[key] = min(highs) if highs else np.inf
            self._max_low[key] = max(lows) if lows else -np.inf
            self._has_recipe[key] = any(self.rules[i].recipe for i in matched)
            self._kind[key] = self._kind_column(key)
            number = self._machine_numbers.get(machine)
            if number is None:
                number = self._machine_numbers[machine] = len(self._machine_names)
                self._machine_names.append(machine)
            self._machine[key] = number
        self._n = n

    def set_book(self, book: RecipeBook) -> None:
        """Use another recipe book from now on (a reload); kind columns are rebuilt."""
        self.book = book
        for key in range(self._n):
            self._kind[key] = self._kind_column(key)

    def _kind_column(self, key: int) -> int:
        # The NaN column also for sensors no recipe rule judges: their recipe limits stay NaN.
        column = self.book.kind_index(self.keys.sensors[key]) if self._has_recipe[key] else -1
        return column if column >= 0 else self.book.no_kind

    # ---- evaluation -------------------------------------------------------------------
    def evaluate(self, machine: str | None, key_ids: np.ndarray, ts: np.ndarray, value: np.ndarray,
                 now_ms: int) -> list[AlertEvent]:
        """Judge one machine's batch; returns the events it causes, in decision order.
        `machine` None: the rows may belong to several machines (single-reading messages)."""
        if not self.rules or not len(ts):
            return []
        self._grow()
        if machine is None:
            return self._evaluate_machines(key_ids, ts, value, now_ms)
        out = (value > self._min_high[key_ids]) | (value < self._max_low[key_ids])
        recipe = None
        if self._any_recipe:
            if np.count_nonzero(self._has_recipe[key_ids]):
                recipe = self._recipe_rows(machine, key_ids, ts)
                if recipe is not None:
                    out |= (value > recipe.hi) | (value < recipe.lo)
        if self._n_active:
            out |= self._active[key_ids] > 0
        # count_nonzero, not .any(): the latter costs microseconds of Python per batch here.
        if not np.count_nonzero(out):
            return []
        return self._slow(machine, key_ids, ts, value, out, recipe, now_ms)

    def _evaluate_machines(self, key_ids: np.ndarray, ts: np.ndarray, value: np.ndarray,
                           now_ms: int) -> list[AlertEvent]:
        if not self._any_recipe:  # the fixed-limit check needs no machine: try it on all rows
            out = (value > self._min_high[key_ids]) | (value < self._max_low[key_ids])
            if self._n_active:
                out |= self._active[key_ids] > 0
            if not np.count_nonzero(out):
                return []
        machines = self._machine[key_ids]
        numbers = np.unique(machines)
        if len(numbers) == 1:
            return self.evaluate(self._machine_names[int(numbers[0])], key_ids, ts, value, now_ms)
        events: list[AlertEvent] = []
        for number in numbers.tolist():
            rows = np.flatnonzero(machines == number)
            events.extend(self.evaluate(self._machine_names[number], key_ids[rows], ts[rows], value[rows], now_ms))
        return events

    def _recipe_rows(self, machine: str, key_ids: np.ndarray, ts: np.ndarray) -> _RecipeRows | None:
        # Usually one run covers the whole batch: then no per-reading run lookup and no copies.
        first, last = int(ts.min()), int(ts.max())
        covering = self.lots.covering(machine, first, last)
        if covering is not None:
            _, run = covering
            rv = self.book.get(run.recipe, run.recipe_version) if run.recipe_version else None
            if rv is None:
                return None
            return _RecipeRows.uniform(run, *self.book.limits(
                rv, ts - run.start_ms, self._kind[key_ids], first - run.start_ms, last - run.start_ms))
        index, runs = self.lots.runs_for(machine, ts)
        if not runs or index.max() < 0:
            return None
        rows = _RecipeRows(len(ts))
        rows.runs = runs
        rows.run = index
        steps = rows.step
        assert isinstance(steps, np.ndarray)  # _RecipeRows(n) starts with one step per reading
        for r in np.unique(index[index >= 0]).tolist():
            run = runs[r]
            rv = self.book.get(run.recipe, run.recipe_version) if run.recipe_version else None
            if rv is None:
                continue
            sel = np.flatnonzero(index == r)
            lo, hi, tol, step = self.book.limits(rv, ts[sel] - run.start_ms, self._kind[key_ids[sel]])
            rows.lo[sel], rows.hi[sel], rows.tol[sel], steps[sel] = lo, hi, tol, step
        return rows

    def _slow(self, machine: str, key_ids: np.ndarray, ts: np.ndarray, value: np.ndarray,
              interesting: np.ndarray, recipe: _RecipeRows | None, now_ms: int) -> list[AlertEvent]:
        # Every reading of a sensor that needs a look, not just its out ones: a reading back
        # inside is what cancels a pending excursion or clears an open one.
        hit = np.unique(key_ids[interesting])
        sel = np.flatnonzero(key_ids == hit[0] if len(hit) == 1 else np.isin(key_ids, hit))
        sel = sel[np.lexsort((ts[sel], key_ids[sel]))]
        bounds = np.flatnonzero(np.diff(key_ids[sel])) + 1
        events: list[AlertEvent] = []
        for rows in np.split(sel, bounds):
            key = int(key_ids[rows[0]])
            for ri in self._rules_of[key]:
                rule = self.rules[ri]
                n = len(rows)
                if rule.recipe:
                    if recipe is None:
                        lo = hi = h = np.full(n, np.nan)
                    else:
                        lo, hi = recipe.lo[rows], recipe.hi[rows]
                        h = rule.hysteresis * recipe.tol[rows]
                else:
                    lo = np.full(n, -np.inf if rule.low is None else rule.low)
                    hi = np.full(n, np.inf if rule.high is None else rule.high)
                    h = np.full(n, rule.hysteresis)
                self._walk(ri, key, machine, rows, ts, value, lo, hi, h, recipe, now_ms, events)
        return events

    def _walk(self, ri: int, key: int, machine: str, rows: np.ndarray, ts_all: np.ndarray,
              value_all: np.ndarray, lo: np.ndarray, hi: np.ndarray, h: np.ndarray,
              recipe: _RecipeRows | None, now_ms: int, events: list[AlertEvent]) -> None:
        """Run one (rule, sensor) state machine over its readings of this batch, in ts order."""
        rule = self.rules[ri]
        st = self._states.get((ri, key))
        if st is None:
            st = _State()
        was_active = st.phase != NORMAL
        t, x = ts_all[rows], value_all[rows]
        if was_active and st.last_ts is not None and t[0] < st.last_ts:
            fresh = t >= st.last_ts
            self.late_readings += int(len(t) - fresh.sum())
            rows, t, x, lo, hi, h = rows[fresh], t[fresh], x[fresh], lo[fresh], hi[fresh], h[fresh]
        m = len(t)
        cls = np.zeros(m, np.int8)
        cls[x > hi] = 1
        cls[x < lo] = -1
        for_ms = round(rule.for_seconds * 1000)

        def emit(j: int, state: str, threshold: float, flapping: bool = False, note: str = "") -> None:
            events.append(self._event(rule, key, machine, int(rows[j]), int(t[j]), float(x[j]), st.kind,
                                      threshold, state, now_ms, flapping, note, recipe))

        why: np.ndarray | None = None

        def no_limit(start: int, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
            """For readings start.. of a recipe rule without a limit: (settling, ended), or
            None when every reading has one (always so for fixed rules)."""
            nonlocal why
            if not rule.recipe:
                return None
            missing = np.isnan(limit)
            if not np.count_nonzero(missing):
                return None
            if why is None:
                why = self._no_limit(machine, t)
            settling = missing & (why[start:] == _SETTLING)
            return settling, missing & ~settling

        def end(j: int) -> None:
            note = self._end_note(machine, key, int(t[j]), int(why[j]) if why is not None else _NO_RUN)
            emit(j, "cleared", st.threshold, note=note)

        i = 0
        while i < m:
            if st.phase == NORMAL:
                nz = np.flatnonzero(cls[i:])
                if not len(nz):
                    break
                j = i + int(nz[0])
                st.kind = int(cls[j])
                if for_ms <= 0:
                    self._raise(st, j, t, lo, hi, emit)
                    i = j + 1
                else:
                    st.phase, st.since, i = PENDING, int(t[j]), j
            elif st.phase == PENDING:
                broken = np.flatnonzero(cls[i:] != st.kind)
                k = i + int(broken[0]) if len(broken) else m
                due = max(i, int(np.searchsorted(t, st.since + for_ms, side="left")))
                if due < k:  # out without a break until the `for` duration was reached
                    self._raise(st, due, t, lo, hi, emit)
                    i = due + 1
                elif k < m:
                    st.phase, i = NORMAL, k  # back inside (or out the other way): judge k again
                else:
                    i = m
            elif st.phase == RAISED:
                # Back past the hysteresis by the limit that applies (NaN compares False), or
                # the end of every limit; a reading in a settle window is neither.
                limits = hi[i:] if st.kind > 0 else lo[i:]
                if st.kind > 0:
                    stop = x[i:] <= limits - h[i:]
                else:
                    stop = x[i:] >= limits + h[i:]
                missing = no_limit(i, limits)
                if missing is not None:
                    stop |= missing[1]
                nz = np.flatnonzero(stop)
                if not len(nz):
                    break
                j = i + int(nz[0])
                limit = hi[j] if st.kind > 0 else lo[j]
                if np.isnan(limit):
                    end(j)
                else:
                    emit(j, "cleared", float(limit))
                st.phase, i = NORMAL, j  # the clearing reading may be out the other way
            else:  # DAMPED: cleared once the sensor stayed inside for a whole flap window
                inside = (x[i:] <= hi[i:] - h[i:]) & (x[i:] >= lo[i:] + h[i:])
                missing = no_limit(i, hi[i:])
                if missing is None:
                    bad, ended = ~inside, None
                else:
                    bad, ended = ~inside & ~missing[0] & ~missing[1], missing[1]
                last_bad = np.maximum.accumulate(np.where(bad, t[i:], st.last_bad))
                stop = inside & (t[i:] - last_bad >= self.flap_window_ms)
                if ended is not None:
                    stop |= ended
                quiet = np.flatnonzero(stop)
                if not len(quiet):
                    st.last_bad = int(last_bad[-1])
                    break
                j = i + int(quiet[0])
                if ended is not None and ended[j - i]:
                    end(j)
                else:
                    emit(j, "cleared", float(hi[j] if st.kind > 0 else lo[j]),
                         note=f"stable again: inside for {self.flap_window_ms / 1000:g} s after flapping")
                st.phase, i = NORMAL, j + 1

        if m:
            st.last_ts = int(t[-1]) if st.phase != NORMAL else None
        now_active = st.phase != NORMAL
        if now_active != was_active:
            delta = 1 if now_active else -1
            self._active[key] += delta
            self._n_active += delta
        if now_active or st.raises:
            newest = int(t[-1]) if m else (st.last_ts or 0)
            while st.raises and st.raises[0] < newest - self.flap_window_ms:
                st.raises.popleft()
        if now_active or st.raises:
            self._states[(ri, key)] = st
        else:
            self._states.pop((ri, key), None)

    def _raise(self, st: _State, j: int, t: np.ndarray, lo: np.ndarray, hi: np.ndarray, emit) -> None:
        ts = int(t[j])
        while st.raises and st.raises[0] < ts - self.flap_window_ms:
            st.raises.popleft()
        flapping = 0 < self.flap_max <= len(st.raises)
        st.raises.append(ts)
        st.threshold = float(hi[j] if st.kind > 0 else lo[j])
        if flapping:
            st.phase, st.last_bad = DAMPED, ts
            window = f"{self.flap_window_ms / 1000:g} s"
            emit(j, "raised", st.threshold, True,
                 f"flapping: {len(st.raises)} raises within {window}; held raised until inside for {window}")
        else:
            st.phase = RAISED
            emit(j, "raised", st.threshold)

    def _no_limit(self, machine: str, t: np.ndarray) -> np.ndarray:
        """Per reading, why a recipe limit may be missing (meaningful only where it is)."""
        index, runs = self.lots.runs_for(machine, t)
        why = np.full(len(t), _NO_RUN, np.int8)
        for r in np.unique(index[index >= 0]).tolist():
            run = runs[r]
            sel = np.flatnonzero(index == r)
            rv = self.book.get(run.recipe, run.recipe_version) if run.recipe_version else None
            if rv is None:
                why[sel] = _NO_RECIPE
                continue
            steps, settling = self.book.steps_at(rv, t[sel] - run.start_ms)
            why[sel] = np.where(settling, _SETTLING, np.where(steps >= len(rv.steps), _RECIPE_DONE, _NO_KIND))
        return why

    def _end_note(self, machine: str, key: int, ts: int, why: int) -> str:
        """What ended a recipe excursion without the value coming back, in words."""
        run = self.lots.run_at(machine, ts) if why != _NO_RUN else None
        if run is None:
            return "the lot run ended"
        rv = self.book.get(run.recipe, run.recipe_version) if run.recipe_version else None
        step = rv.step_at(ts - run.start_ms) if rv is not None else None
        if rv is None or why == _NO_RECIPE:
            return (f"lot run {run.lot} has no recipe limits "
                    f"({run.recipe} v{run.recipe_version or '?'} is not in the recipe data)")
        if step is None:
            return f"recipe {rv.recipe} v{rv.version} ended (no step after {rv.steps[-1].name})"
        return f"step {step.name} sets no limit for {kind_of(self.keys.sensors[key])}"

    def _event(self, rule: Rule, key: int, machine: str, row: int, ts: int, value: float, kind: int,
               threshold: float, state: str, now_ms: int, flapping: bool, note: str,
               recipe: _RecipeRows | None) -> AlertEvent:
        run, step = None, None
        if recipe is not None:
            run_index, step_index = recipe.at(row)
            if run_index >= 0:
                run = recipe.runs[run_index]
                if rule.recipe and step_index >= 0 and run.recipe_version:  # step: recipe rules only
                    rv = self.book.get(run.recipe, run.recipe_version)
                    step = rv.steps[step_index].name if rv else None
        if run is None:
            run = self.lots.run_at(machine, ts)
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return AlertEvent(
            seq=seq, writer=self.writer, machine=machine, sensor=self.keys.sensors[key], ts=ts,
            value=value, kind=_KIND[kind], threshold=threshold, rule=rule.name, state=state,
            raised_at=now_ms, flapping=flapping, note=note,
            lot=run.lot if run else None, wafer=run.wafer if run else None,
            recipe=run.recipe if run else None, recipe_version=run.recipe_version if run else None,
            step=step,
        )

    # ---- restart ------------------------------------------------------------------------
    def restore(self, events: Iterable[AlertEvent]) -> int:
        """Rebuild open excursions and flap history from this writer's earlier events, so
        that an excursion raised before a restart is not raised again. Returns how many
        excursions are open."""
        by_name = {r.name: i for i, r in enumerate(self.rules)}
        for e in sorted(events, key=lambda e: e.seq):
            if e.writer != self.writer:
                continue  # another ingest process's event: its sensors are not ours
            self.next_seq = max(self.next_seq, e.seq + 1)
            ri = by_name.get(e.rule)
            if ri is None:
                continue  # a rule since removed
            key = self.keys.id_of(e.machine, e.sensor)
            st = self._states.setdefault((ri, key), _State())
            if e.state == "raised":
                st.raises.append(e.ts)
                st.phase = DAMPED if e.flapping else RAISED
                st.kind = 1 if e.kind == "high" else -1
                st.threshold = e.threshold
                st.last_ts = st.last_bad = e.ts
            else:
                st.phase, st.last_ts = NORMAL, None
        self._grow()
        self._active[:] = 0
        self._n_active = 0
        for (_ri, key), st in list(self._states.items()):
            if st.phase != NORMAL:
                self._active[key] += 1
                self._n_active += 1
        return self._n_active

    @property
    def open_count(self) -> int:
        """Pending, raised or damped (rule, sensor) pairs; safe to read from any thread."""
        return self._n_active

    def open_excursions(self) -> list[Excursion]:
        """Not thread-safe: call under the lock that guards `evaluate`."""
        return [Excursion(self.rules[ri].name, self.keys.machines[key], self.keys.sensors[key],
                          _PHASE_NAMES[st.phase], _KIND.get(st.kind, ""))
                for (ri, key), st in self._states.items() if st.phase != NORMAL]
